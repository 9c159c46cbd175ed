"""/api/v1/models: list, get, delete, artifact downloads and predictions."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from app.api.body_limit import prediction_limit, read_body
from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import problems
from app.api.uploads import image_files
from app.config import Settings, get_settings
from app.models import TrainedModel
from app.schemas.model import ModelList, ModelOut, PredictRequest, PredictResponse
from app.services import models as models_service
from app.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from app.serving import predict as predictor
from app.serving.access import authorized_ref, model_ref
from app.serving.backends import LoadedModel, choose_backend
from app.serving.inputs import InputError, Limits
from app.serving.metrics import PREDICT_LATENCY
from app.serving.server import ModelServer, model_server_for

router = APIRouter(prefix="/api/v1/models", tags=["models"])

ERRORS = problems(401, 404, 422, what="model")
PREDICT_ERRORS = problems(
    400,
    401,
    404,
    413,
    415,
    422,
    503,
    what="model",
    custom={
        400: "A malformed body (multipart)",
        413: "Too many images, too many pixels, or too large a body",
        415: "Neither JSON nor multipart, or not PNG/JPEG",
    },
)


def model_server(request: Request) -> ModelServer:
    return model_server_for(request.app)


def _backend_of(settings: Settings, server: ModelServer, row: TrainedModel) -> str:
    ref = model_ref(row, settings.artifact_dir)
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
    responses=problems(
        401, 404, 409, what="model", custom={409: "An unfinished job starts from this model"}
    ),
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
    _, ref = await authorized_ref(
        server.lookups,
        request.headers.get("authorization", ""),
        model_id=model_id,
        artifact_dir=settings.artifact_dir,
    )
    model = await server.model(ref)
    x = await read_inputs(request, model, settings)
    content = await predictor.predict(server, model, x, k)
    PREDICT_LATENCY.labels(model.id, "v1").observe(time.perf_counter() - start)
    return Response(content, media_type="application/json")


async def read_inputs(request: Request, model: LoadedModel, settings: Settings) -> np.ndarray:
    """The body, by its Content-Type, as the model's input: multipart image files or a
    JSON `{"inputs": [...]}`."""
    limits = Limits(settings.predict_max_batch, settings.predict_max_pixels)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files = await image_files(request, max_files=settings.predict_max_batch)
        return await predictor.image_inputs(files, model, limits)
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise InputError(
            "header.Content-Type",
            f"{content_type!r} is not accepted: send application/json or multipart/form-data",
            status=415,
        )
    body = await read_body(request, prediction_limit())
    return await predictor.json_body_inputs(body, model, limits)
