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
from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.errors import ProblemError
from app.config import get_settings
from app.services import models as models_service
from app.serving.backends import LoadedModel, ModelUnavailableError, choose_backend
from app.serving.http import decode_content, read_body
from app.serving.inputs import InputError, Limits
from app.serving.metrics import PREDICT_LATENCY
from app.serving.oip import MODEL_VERSION, encode_infer, model_metadata, parse_infer
from app.serving.server import ModelServer, model_server_for

router = APIRouter(prefix="/v2", tags=["inference (V2)"])

ERROR = {"content": {"application/json": {"example": {"error": "message"}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key", **ERROR},
    404: {"description": "No such model (or another owner's), or no such version", **ERROR},
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"description": "A malformed request: names the tensor or field at fault", **ERROR},
    413: {"description": "Too large a batch or body", **ERROR},
    503: {"description": "The model's artifacts cannot be loaded on this server", **ERROR},
}
PLATFORMS = {"onnx": "onnxruntime_onnx", "torch": "pytorch"}


def _server(request: Request) -> ModelServer:
    return model_server_for(request.app)


def _check_version(model_id: str, version: str | None) -> None:
    if version is not None and version != MODEL_VERSION:
        raise ProblemError(
            404, f"model {model_id} has no version {version!r}; its only version is '1'"
        )


def _owned(session: Any, owner: str, model_id: str) -> Any:
    try:
        return models_service.get_owned(session, owner, model_id)
    except ProblemError:
        raise ProblemError(404, f"unknown model {model_id!r}") from None


@router.get("", summary="Server metadata", responses=ERRORS)
def server_metadata(owner: OwnerDep) -> dict[str, Any]:
    return {"name": "stillhouse", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/models/{model_id}", summary="Model metadata", responses=ERRORS)
def metadata(
    model_id: str,
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    row = _owned(session, owner, model_id)
    ref = models_service.model_ref(row, settings.artifact_dir)
    backend = choose_backend(
        ref.meta,
        ref.folder,
        setting=settings.serving_backend,
        device=_server(request).device.type,
    )
    return model_metadata(row.id, row.meta, PLATFORMS[backend])


@router.get("/models/{model_id}/versions/{version}", include_in_schema=False)
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
    "/models/{model_id}/ready",
    summary="Model readiness: loads the model, 200 once it serves",
    responses=INFER_ERRORS,
)
async def model_ready(model_id: str, request: Request) -> dict[str, Any]:
    await _loaded(request, model_id, get_settings())
    return {"name": model_id, "ready": True}


@router.get("/models/{model_id}/versions/{version}/ready", include_in_schema=False)
async def model_of_version_ready(model_id: str, version: str, request: Request) -> dict[str, Any]:
    _check_version(model_id, version)
    return await model_ready(model_id, request)


async def _loaded(request: Request, model_id: str, settings: Any) -> LoadedModel:
    """The caller's model, loaded; the key is checked here (see `serving_ref`)."""
    try:
        _, ref = await models_service.authorized_ref(
            request, _server(request), model_id=model_id, artifact_dir=settings.artifact_dir
        )
    except ProblemError as exc:
        if exc.status != 404:
            raise
        raise ProblemError(404, f"unknown model {model_id!r}") from None
    try:
        return await _server(request).model(ref)
    except ModelUnavailableError as exc:
        raise ProblemError(503, str(exc)) from None


@router.post(
    "/models/{model_id}/infer",
    summary="Inference: FP32 input [N, C, H, W], outputs logits and probabilities",
    responses=INFER_ERRORS,
    openapi_extra={
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
        }
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
    try:
        body = await read_body(request, settings.max_upload_bytes)
        body = decode_content(body, content_encoding, settings.max_upload_bytes)
        if len(body) > 64 * 1024:
            parsed = await run_in_threadpool(
                parse_infer, body, header_length, model=model, limits=limits
            )
        else:
            parsed = parse_infer(body, header_length, model=model, limits=limits)
    except InputError as exc:
        raise ProblemError(exc.status, f"{exc.field} {exc.message}") from None
    logits = await _server(request).logits(model, parsed.x)
    content, headers = encode_infer(parsed, model_id=model.id, logits=logits)
    PREDICT_LATENCY.labels(model.id, "v2").observe(time.perf_counter() - start)
    media_type = headers.pop("Content-Type")
    return Response(content, media_type=media_type, headers=headers)


@router.post("/models/{model_id}/versions/{version}/infer", include_in_schema=False)
async def infer_version(
    model_id: str,
    version: str,
    request: Request,
    header_length: Annotated[str | None, Header(alias="Inference-Header-Content-Length")] = None,
    content_encoding: Annotated[str | None, Header(alias="Content-Encoding")] = None,
) -> Response:
    _check_version(model_id, version)
    return await infer(model_id, request, header_length, content_encoding)
