"""/api/v1/checkpoints: upload teacher weights (safetensors), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import problems
from app.api.uploads import UploadDep, parse_form, upload_errors, upload_openapi
from app.schemas.checkpoint import CheckpointForm, CheckpointList, CheckpointOut
from app.services import checkpoints as checkpoints_service
from app.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

router = APIRouter(prefix="/api/v1/checkpoints", tags=["checkpoints"])

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
        "arch": {"type": "string", "examples": ["resnet18"]},
        "num_classes": {"type": "integer", "minimum": 1},
        "width": {"type": "number", "description": "small_cnn only"},
        "in_channels": {"type": "integer", "enum": [1, 3]},
        "input_size": {"type": "integer", "minimum": 8, "maximum": 1024},
        "mean": {"type": "string", "examples": ["0.485,0.456,0.406"]},
        "std": {"type": "string", "examples": ["0.229,0.224,0.225"]},
        "name": {"type": "string", "maxLength": 200},
    },
)


@router.post(
    "",
    status_code=201,
    response_model=CheckpointOut,
    responses=UPLOAD_ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Upload a checkpoint (safetensors) to use as a teacher",
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
    "", response_model=CheckpointList, responses=ERRORS, summary="List checkpoints, newest first"
)
def list_checkpoints(
    owner: OwnerDep,
    session: SessionDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query()] = None,
) -> CheckpointList:
    rows, token = checkpoints_service.list_checkpoints(
        session, owner=owner, page_size=page_size, page_token=page_token
    )
    return CheckpointList(
        checkpoints=[checkpoints_service.checkpoint_out(r) for r in rows], next_page_token=token
    )


@router.get(
    "/{checkpoint_id}", response_model=CheckpointOut, responses=ERRORS, summary="Get a checkpoint"
)
def get_checkpoint(checkpoint_id: str, owner: OwnerDep, session: SessionDep) -> CheckpointOut:
    return checkpoints_service.checkpoint_out(
        checkpoints_service.get_owned(session, owner, checkpoint_id)
    )


@router.delete(
    "/{checkpoint_id}",
    status_code=204,
    responses=problems(401, 404, 409, what="checkpoint", custom={409: "An unfinished job uses it"}),
    summary="Delete a checkpoint and its stored file",
)
def delete_checkpoint(
    checkpoint_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    checkpoints_service.delete_checkpoint(
        session, owner=owner, checkpoint_id=checkpoint_id, artifact_dir=settings.artifact_dir
    )
    return Response(status_code=204)
