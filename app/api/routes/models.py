"""/api/v1/models: list, get, delete, artifact downloads and predictions."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.errors import ProblemError, field_error
from app.config import Settings, get_settings
from app.schemas.model import ModelList, ModelOut, PredictRequest, PredictResponse
from app.services import models as models_service
from app.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from app.serving.backends import LoadedModel, ModelUnavailableError, choose_backend
from app.serving.http import image_files, read_body
from app.serving.inputs import (
    InputError,
    Limits,
    conform,
    images_to_input,
    loads_json,
    nested_array,
)
from app.serving.metrics import PREDICT_LATENCY
from app.serving.oip import softmax
from app.serving.server import ModelServer, model_server_for

router = APIRouter(prefix="/api/v1/models", tags=["models"])

PROBLEM = {"model": dict, "content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key", **PROBLEM},
    404: {"description": "No such model (or another owner's)", **PROBLEM},
    422: {"description": "Invalid request; `errors` names each field", **PROBLEM},
}
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"description": "A malformed body (multipart)", **PROBLEM},
    413: {"description": "Too many images, too many pixels, or too large a body", **PROBLEM},
    415: {"description": "Neither JSON nor multipart, or not PNG/JPEG", **PROBLEM},
    503: {"description": "The model's artifacts cannot be loaded on this server", **PROBLEM},
}
# JSON bodies larger than this are decoded in a thread, off the event loop (bytes).
INLINE_DECODE_BYTES = 64 * 1024
# Answers with more top-k entries than this are built in a thread too: 256 images with
# k=1000 took a quarter of a second of Python, in which the loop served nobody else.
INLINE_ANSWER_ENTRIES = 4096


def model_server(request: Request) -> ModelServer:
    return model_server_for(request.app)


def input_problem(exc: InputError) -> ProblemError:
    return ProblemError(
        exc.status,
        f"{exc.field} {exc.message}",
        type_="too-large" if exc.status == 413 else "invalid",
        title="Invalid input" if exc.status != 413 else None,
        errors=[field_error(exc.field, exc.message)],
    )


def unavailable(exc: ModelUnavailableError) -> ProblemError:
    return ProblemError(503, str(exc), type_="model-unavailable")


def _backend_of(settings: Settings, server: ModelServer, row: Any) -> str:
    ref = models_service.model_ref(row, settings.artifact_dir)
    return choose_backend(
        ref.meta, ref.folder, setting=settings.serving_backend, device=server.device.type
    )


@router.get("", response_model=ModelList, responses=ERRORS, summary="List models, newest first")
def list_models(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query()] = None,
) -> ModelList:
    rows, token = models_service.list_models(
        session, owner=owner, page_size=page_size, page_token=page_token
    )
    server = model_server(request)
    return ModelList(
        models=[
            models_service.model_out(
                row,
                serving_backend=_backend_of(settings, server, row),
                loaded=server.is_loaded(row.id),
            )
            for row in rows
        ],
        next_page_token=token,
    )


@router.get("/{model_id}", response_model=ModelOut, responses=ERRORS, summary="Get a model")
def get_model(
    model_id: str, request: Request, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> ModelOut:
    row = models_service.get_owned(session, owner, model_id)
    server = model_server(request)
    return models_service.model_out(
        row, serving_backend=_backend_of(settings, server, row), loaded=server.is_loaded(row.id)
    )


@router.delete(
    "/{model_id}",
    status_code=204,
    responses={
        **ERRORS,
        409: {"description": "An unfinished job starts from this model", **PROBLEM},
    },
    summary="Delete a model: its row, its artifacts, and its copy in memory",
)
def delete_model(
    model_id: str,
    request: Request,
    owner: OwnerDep,
    session: WriteSessionDep,
    settings: SettingsDep,
) -> Response:
    models_service.delete_model(
        session, owner=owner, model_id=model_id, artifact_dir=settings.artifact_dir
    )
    model_server(request).forget(model_id)
    return Response(status_code=204)


@router.get(
    "/{model_id}/artifacts/{name}",
    responses={
        **ERRORS,
        200: {
            "description": "The file: model.safetensors, model.json or model.onnx",
            "content": {"application/octet-stream": {}, "application/json": {}},
        },
    },
    response_class=FileResponse,
    summary="Download an artifact",
)
def download_artifact(
    model_id: str, name: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    row = models_service.get_owned(session, owner, model_id)
    path = models_service.artifact_file(row, name, settings.artifact_dir)
    return FileResponse(path, media_type=models_service.ARTIFACTS[name], filename=name)


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
    summary="Predict: JSON tensors or PNG/JPEG files",
    description='JSON `{"inputs": [...]}` (N x C x H x W or N x H x W, on the training '
    "data's scale) or multipart `files` (PNG/JPEG, grey or colour, any size). The model's "
    "own resizing and normalisation apply. Answers one prediction per input.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                        "required": ["files"],
                    }
                },
            },
        }
    },
)
async def predict(
    model_id: str,
    request: Request,
    k: Annotated[
        int, Query(ge=1, le=1000, description="Classes in top_k (at most the model's count).")
    ] = 3,
) -> Response:
    start = time.perf_counter()
    # Settings without a dependency: FastAPI would run the sync getter in a thread.
    settings = get_settings()
    server = model_server(request)
    _, ref = await models_service.authorized_ref(
        request, server, model_id=model_id, artifact_dir=settings.artifact_dir
    )
    try:
        model = await server.model(ref)
    except ModelUnavailableError as exc:
        raise unavailable(exc) from None
    try:
        x = await decode_inputs(request, model, settings)
    except InputError as exc:
        raise input_problem(exc) from None
    logits = await server.logits(model, x)
    if len(logits) * min(k, logits.shape[1]) <= INLINE_ANSWER_ENTRIES:
        content = answer(logits, model.classes, k, model.task)
    else:
        content = await run_in_threadpool(answer, logits, model.classes, k, model.task)
    PREDICT_LATENCY.labels(model.id, "v1").observe(time.perf_counter() - start)
    return Response(content, media_type="application/json")


def answer(logits: np.ndarray, classes: list[str], k: int, task: str = "classification") -> bytes:
    """The response body: `predictions` as JSON (for regression models: `values`, one
    per target, in the order of `classes`, i.e. target_0, target_1, ...)."""
    if task == "regression":
        body = {"predictions": [{"values": row.tolist()} for row in logits.astype(np.float64)]}
    else:
        body = predictions(logits, classes, k)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


async def decode_inputs(request: Request, model: LoadedModel, settings: Settings) -> np.ndarray:
    limits = Limits(settings.predict_max_batch, settings.predict_max_pixels)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files = await image_files(
            request, limit=settings.max_upload_bytes, max_files=settings.predict_max_batch
        )
        return await run_in_threadpool(
            images_to_input,
            files,
            field="files",
            shape=model.input_shape,
            scale=model.scale,
            limits=limits,
        )
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise InputError(
            "header.Content-Type",
            f"{content_type!r} is not accepted: send application/json or multipart/form-data",
            status=415,
        )
    body = await read_body(request, settings.max_upload_bytes)
    if len(body) <= INLINE_DECODE_BYTES:
        return json_inputs(body, model, limits)
    return await run_in_threadpool(json_inputs, body, model, limits)


def json_inputs(body: bytes, model: LoadedModel, limits: Limits) -> np.ndarray:
    try:
        data = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise InputError("body", f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("body", 'must be a JSON object: {"inputs": [...]}')
    unknown = sorted(set(data) - {"inputs"})
    if unknown:
        raise InputError(unknown[0], 'is an unknown field; the body is {"inputs": [...]}')
    if "inputs" not in data:
        raise InputError("inputs", "is missing")
    x = nested_array(data["inputs"], field="inputs", limits=limits)
    return conform(x, field="inputs", shape=model.input_shape, limits=limits, strict=False)


def predictions(logits: np.ndarray, classes: list[str], k: int) -> dict[str, Any]:
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    # argpartition then sort: O(classes) per row, for models with many classes.
    if k < probs.shape[1]:
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(probs.shape[1]), (len(probs), 1))
    out = []
    for row, candidates in zip(probs, top, strict=True):
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        top_k = [{"label": classes[i], "score": float(row[i])} for i in order]
        best = int(order[0])
        out.append(
            {"label": classes[best], "index": best, "score": float(row[best]), "top_k": top_k}
        )
    return {"predictions": out}
