"""Open Inference Protocol (KServe V2) under /v2; the model name is the model id.

/v2/health/live and /v2/health/ready live in health.py and need no key; every route here
does. Errors are `{"error": "..."}` (the error handlers choose that form for /v2 paths).
Model version: each model has one, "1"; the `/versions/{version}` forms that
tritonclient sends when given a version are accepted too.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.api.body_limit import decode_content, prediction_limit, read_body
from app.api.deps import BEARER_SECURITY, OwnerDep, SessionDep, SettingsDep
from app.api.errors import ProblemError
from app.api.responses import example, oip_errors
from app.config import get_settings
from app.services import examples
from app.services import models as models_service
from app.services.errors import NotFoundError
from app.serving.access import model_ref
from app.serving.backends import LoadedModel, choose_backend
from app.serving.inputs import Limits
from app.serving.metrics import PREDICT_LATENCY
from app.serving.oip import MODEL_VERSION, encode_infer, model_metadata, parse_infer
from app.serving.server import ModelServer, model_server_for

router = APIRouter(prefix="/v2", tags=["inference (V2)"])

NOT_FOUND = "No such model (or another owner's), or no such version"
ERRORS = oip_errors(401, 404, custom={404: NOT_FOUND})
INFER_ERRORS = oip_errors(
    400,
    401,
    404,
    413,
    503,
    custom={
        400: "A malformed request: names the tensor or field at fault",
        404: NOT_FOUND,
        413: "Too large a batch or body",
    },
)
PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx_int8": "onnxruntime_onnx", "torch": "pytorch"}


def _server(request: Request) -> ModelServer:
    return model_server_for(request.app)


def unknown_model(model_id: str, exc: NotFoundError) -> ProblemError:
    """OIP's 404 for a model id, saying what the id names when it is another kind."""
    return ProblemError(404, f"unknown model {model_id!r}" + (f"; {exc.hint}" if exc.hint else ""))


def _check_version(model_id: str, version: str | None) -> None:
    if version is not None and version != MODEL_VERSION:
        raise ProblemError(
            404, f"model {model_id} has no version {version!r}; its only version is '1'"
        )


def _owned(session: Any, owner: str, model_id: str) -> Any:
    try:
        return models_service.get_owned(session, owner, model_id)
    except NotFoundError as exc:
        raise unknown_model(model_id, exc) from None


@router.get(
    "",
    summary="Server metadata",
    responses={**ERRORS, **example(200, examples.V2_SERVER)},
    description="Answers the server's Open Inference Protocol metadata: its name, version "
    "and the protocol extensions it supports (`binary_tensor_data`). Needs a key, like "
    "every /v2 route but the health ones.",
)
def server_metadata(owner: OwnerDep) -> dict[str, Any]:
    return {"name": "stillhouse", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get(
    "/models/{model_id:id}",
    summary="Model metadata",
    responses={**ERRORS, **example(200, examples.V2_MODEL)},
    description="Answers the model's metadata (the model name is its id): the one input, "
    "`input` FP32 [-1, C, H, W]; the outputs `logits` and `probabilities`, FP32 [-1, "
    "classes] (a regression model has `logits` only); the platform that serves it "
    "(onnxruntime_onnx or pytorch); and in `parameters` the class names, the task and the "
    "`scale` inputs are on. Another owner's model answers 404 like a missing one.",
)
def metadata(
    model_id: str,
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    row = _owned(session, owner, model_id)
    ref = model_ref(row, settings.artifact_dir)
    backend = choose_backend(
        ref.meta,
        ref.folder,
        setting=settings.serving_backend,
        device=_server(request).device.type,
    )
    return model_metadata(row.id, row.meta, PLATFORMS[backend])


@router.get("/models/{model_id:id}/versions/{version}", include_in_schema=False)
def metadata_of_version(
    model_id: str,
    version: str,
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    _check_version(model_id, version)
    return metadata(model_id, request, owner, session, settings)


@router.get(
    "/models/{model_id:id}/ready",
    summary="Model readiness: loads the model, 200 once it serves",
    responses={**INFER_ERRORS, **example(200, examples.V2_READY)},
    openapi_extra=BEARER_SECURITY,
    description="Loads the model into this server's cache if it is not there yet and "
    'answers 200 `{"name", "ready": true}` once it can serve, so the first inference does '
    "not pay for the load. 404 for no such model (or another owner's); 503 when its "
    "artifacts cannot be loaded on this server.",
)
async def model_ready(model_id: str, request: Request) -> dict[str, Any]:
    await _loaded(request, model_id, get_settings())
    return {"name": model_id, "ready": True}


@router.get("/models/{model_id:id}/versions/{version}/ready", include_in_schema=False)
async def model_of_version_ready(model_id: str, version: str, request: Request) -> dict[str, Any]:
    _check_version(model_id, version)
    return await model_ready(model_id, request)


async def _loaded(request: Request, model_id: str, settings: Any) -> LoadedModel:
    """The caller's model, loaded; the key is checked here (app/serving/access.py)."""
    try:
        ref = await _server(request).authorize(
            request.headers.get("authorization", ""), model_id, settings.artifact_dir
        )
    except NotFoundError as exc:
        raise unknown_model(model_id, exc) from None
    return await _server(request).model(ref)


@router.post(
    "/models/{model_id:id}/infer",
    summary="Inference: FP32 input [N, C, H, W], outputs logits and probabilities",
    responses={**INFER_ERRORS, **example(200, examples.V2_INFER_RESPONSE)},
    description="Runs the model on one FP32 input tensor [N, C, H, W], exactly the shape the "
    "metadata gives and on the same scale as /predict's inputs (no resizing or channel "
    "conversion here). Answers the requested outputs (both `logits` and `probabilities` "
    "when `outputs` is absent), as plain JSON or, with the binary tensor extension, as raw "
    "tensors after a JSON header. Bodies may be gzip- or deflate-compressed. 400 names the "
    "tensor or field at fault; 413 past the batch or body limits; 404 for no such model.",
    openapi_extra={
        **BEARER_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "example": {
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, 1, 2, 2],
                                "datatype": "FP32",
                                "data": [0.0, 0.5, 1.0, 0.25],
                            }
                        ],
                        "outputs": [{"name": "logits"}, {"name": "probabilities"}],
                    }
                },
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "Binary tensor extension: JSON header of "
                        "Inference-Header-Content-Length bytes, then the raw tensors.",
                    }
                },
            },
        },
    },
)
async def infer(
    model_id: str,
    request: Request,
    header_length: Annotated[str | None, Header(alias="Inference-Header-Content-Length")] = None,
    content_encoding: Annotated[str | None, Header(alias="Content-Encoding")] = None,
) -> Response:
    start = time.perf_counter()
    # Settings without a dependency: FastAPI would run the sync getter in a thread.
    settings = get_settings()
    model = await _loaded(request, model_id, settings)
    limits = Limits(settings.predict_max_batch, settings.predict_max_pixels)
    bound = prediction_limit()
    body = decode_content(await read_body(request, bound), content_encoding, bound)
    if len(body) > 64 * 1024:
        parsed = await run_in_threadpool(
            parse_infer, body, header_length, model=model, limits=limits
        )
    else:
        parsed = parse_infer(body, header_length, model=model, limits=limits)
    logits = await _server(request).logits(model, parsed.x)
    content, headers = encode_infer(parsed, model_id=model.id, logits=logits)
    PREDICT_LATENCY.labels(model.id, "v2").observe(time.perf_counter() - start)
    media_type = headers.pop("Content-Type")
    return Response(content, media_type=media_type, headers=headers)


@router.post("/models/{model_id:id}/versions/{version}/infer", include_in_schema=False)
async def infer_version(
    model_id: str,
    version: str,
    request: Request,
    header_length: Annotated[str | None, Header(alias="Inference-Header-Content-Length")] = None,
    content_encoding: Annotated[str | None, Header(alias="Content-Encoding")] = None,
) -> Response:
    _check_version(model_id, version)
    return await infer(model_id, request, header_length, content_encoding)
