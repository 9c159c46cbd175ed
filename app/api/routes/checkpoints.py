"""/api/v1/checkpoints: upload teacher weights (safetensors), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import OwnerDep, PageSize, PageToken, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import example, problems
from app.api.uploads import NAME_FIELD, UploadDep, parse_form, upload_errors, upload_openapi
from app.core.archs import known_archs
from app.schemas.checkpoint import CheckpointForm, CheckpointList, CheckpointOut
from app.services import checkpoints as checkpoints_service
from app.services import examples
from app.services.paging import DEFAULT_PAGE_SIZE

router = APIRouter(prefix="/api/v1/checkpoints", tags=["checkpoints"])

# One or three numbers, as the form field's text: "0.5" or "0.485,0.456,0.406".
_NUMBER = r"\s*-?[0-9]+(\.[0-9]+)?\s*"
NUMBERS = rf"^{_NUMBER}(,{_NUMBER},{_NUMBER})?$"
_POSITIVE = r"\s*([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)\s*"
POSITIVE_NUMBERS = rf"^{_POSITIVE}(,{_POSITIVE},{_POSITIVE})?$"

ERRORS = problems(401, 404, 422, what="checkpoint")
UPLOAD_ERRORS = upload_errors(
    "Bad form field, or the file does not fit the architecture; the message names the "
    "missing, unexpected or mis-shaped tensors"
)
UPLOAD_BODY = upload_openapi(
    "A safetensors state dict: a bare backbone's (torchvision names) or a whole Network's "
    "(backbone. prefixes).",
    required=("arch", "num_classes"),
    fields={
        "arch": {
            "type": "string",
            "enum": known_archs(),
            "description": "The architecture the weights are for.",
            "examples": ["resnet18"],
        },
        "num_classes": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100_000,
            "description": "Outputs of the checkpoint's head.",
        },
        "width": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 16,
            "description": "small_cnn only; read from the file when omitted.",
        },
        "in_channels": {
            "type": "integer",
            "enum": [1, 3],
            "description": "Channels of the data the weights were trained on.",
        },
        "input_size": {
            "type": "integer",
            "minimum": 8,
            "maximum": 1024,
            "description": "Pixels a side the backbone was trained at.",
        },
        "mean": {
            "type": "string",
            "pattern": NUMBERS,
            "description": "Normalisation mean per channel, 0-1 scale, comma-separated.",
            "examples": ["0.485,0.456,0.406"],
        },
        "std": {
            "type": "string",
            "pattern": POSITIVE_NUMBERS,
            "description": "Normalisation std per channel (> 0), comma-separated.",
            "examples": ["0.229,0.224,0.225"],
        },
        "name": NAME_FIELD,
    },
)


@router.post(
    "",
    status_code=201,
    response_model=CheckpointOut,
    responses={**UPLOAD_ERRORS, **example(201, examples.CHECKPOINT)},
    openapi_extra=UPLOAD_BODY,
    summary="Upload a checkpoint (safetensors) to use as a teacher",
    description="Uploads teacher weights as the multipart `file` part, a safetensors state "
    "dict (never a pickle), with `arch` and `num_classes`. Only the file's header is read: "
    "its tensors are compared with the architecture built on PyTorch's meta device, as a "
    "bare backbone's state dict or a whole Stillhouse network's. Answers 201 with the "
    "checkpoint and a `Location` header; a job's teacher then names it as `checkpoint_id`. "
    "A file that does not fit answers 422 on `file`, saying how many tensors are missing, "
    "unexpected or mis-shaped and naming the first few; an unknown `arch` answers 422 with "
    "close matches; 413 over STILLHOUSE_MAX_UPLOAD_BYTES; 415 for a body that is not "
    "multipart/form-data; 400 for a malformed one.",
)
async def create_checkpoint(up: UploadDep) -> CheckpointOut:
    row = await up.store(
        "checkpoints",
        lambda upload: checkpoints_service.create_checkpoint(
            up.session,
            owner=up.owner,
            form=parse_form(CheckpointForm, upload.fields),
            path=upload.path,
            filename=upload.filename,
            artifact_dir=up.settings.artifact_dir,
        ),
    )
    return checkpoints_service.checkpoint_out(row)


@router.get(
    "",
    response_model=CheckpointList,
    responses={
        **ERRORS,
        **example(200, examples.page("checkpoints", examples.CHECKPOINT)),
    },
    summary="List checkpoints, newest first",
    description="Answers a page of your uploaded checkpoints, newest first: `page_size` of "
    "them (default 50, at most 500), and `next_page_token` for the next page (null on the "
    "last). A `page_token` this service did not issue answers 422.",
)
def list_checkpoints(
    owner: OwnerDep,
    session: SessionDep,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: PageToken = None,
) -> CheckpointList:
    rows, token = checkpoints_service.list_checkpoints(
        session, owner=owner, page_size=page_size, page_token=page_token
    )
    return CheckpointList(
        checkpoints=[checkpoints_service.checkpoint_out(r) for r in rows], next_page_token=token
    )


@router.get(
    "/{checkpoint_id:id}",
    response_model=CheckpointOut,
    responses={**ERRORS, **example(200, examples.CHECKPOINT)},
    summary="Get a checkpoint",
    description="Answers the checkpoint: the architecture, classes, input channels, width, "
    "input size and normalisation a job rebuilds the teacher with, and what the check found "
    "in the file (`meta`). Another owner's checkpoint answers 404, exactly like a missing "
    "one.",
)
def get_checkpoint(checkpoint_id: str, owner: OwnerDep, session: SessionDep) -> CheckpointOut:
    return checkpoints_service.checkpoint_out(
        checkpoints_service.get_owned(session, owner, checkpoint_id)
    )


@router.delete(
    "/{checkpoint_id:id}",
    status_code=204,
    responses=problems(
        401,
        404,
        409,
        what="checkpoint",
        custom={409: "An unfinished job uses it"},
        examples={
            409: examples.conflict(
                f"/api/v1/checkpoints/{examples.CHECKPOINT_ID}",
                f"checkpoint {examples.CHECKPOINT_ID} is the teacher of unfinished job(s) "
                f"{examples.PIPELINE_JOB_ID}; cancel them or wait for them to finish first",
            )
        },
    ),
    summary="Delete a checkpoint and its stored file",
    description="Deletes the checkpoint and its stored safetensors file; answers 204 with "
    "no body. While a job that has not finished uses it as its teacher, answers 409 naming "
    "the job(s): cancel them or wait for them to finish first.",
)
def delete_checkpoint(
    checkpoint_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    checkpoints_service.delete_checkpoint(
        session, owner=owner, checkpoint_id=checkpoint_id, artifact_dir=settings.artifact_dir
    )
    return Response(status_code=204)
