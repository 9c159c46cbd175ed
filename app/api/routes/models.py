"""/api/v1/models: list, get, delete, artifact downloads and predictions."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from app.api.body_limit import prediction_limit, read_body
from app.api.deps import (
    BEARER_SECURITY,
    OwnerDep,
    PageSize,
    PageToken,
    SessionDep,
    SettingsDep,
    WriteSessionDep,
)
from app.api.responses import example, problems
from app.api.uploads import image_files
from app.config import Settings, get_settings
from app.models import TrainedModel
from app.schemas.model import ModelList, ModelOut, PredictRequest, PredictResponse
from app.services import examples
from app.services import models as models_service
from app.services.paging import DEFAULT_PAGE_SIZE
from app.serving import predict as predictor
from app.serving.access import model_ref
from app.serving.backends import LoadedModel, choose_backend
from app.serving.inputs import InputError, Limits
from app.serving.metrics import PREDICT_LATENCY
from app.serving.server import ModelServer, model_server_for

router = APIRouter(prefix="/api/v1/models", tags=["models"])

ERRORS = problems(401, 404, 422, what="model")
# A raw numpy array body (numpy.save's format): no JSON to build or parse.
NPY_MEDIA_TYPE = "application/x-npy"
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
        415: "Neither JSON, .npy nor multipart, or not PNG/JPEG",
    },
)


def model_server(request: Request) -> ModelServer:
    return model_server_for(request.app)


def _backend_of(settings: Settings, server: ModelServer, row: TrainedModel) -> str:
    ref = model_ref(row, settings.artifact_dir)
    return choose_backend(
        ref.meta, ref.folder, setting=settings.serving_backend, device=server.device.type
    )


@router.get(
    "",
    response_model=ModelList,
    responses={**ERRORS, **example(200, examples.MODEL_LIST)},
    summary="List models, newest first",
    description="Answers a page of your models (the students of jobs that succeeded), "
    "newest first: `page_size` of them (default 50, at most 500), and `next_page_token` for "
    "the next page (null on the last). Each is the body GET /api/v1/models/{model_id} "
    "answers. A `page_token` this service did not issue answers 422.",
)
def list_models(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: PageToken = None,
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


@router.get(
    "/{model_id:id}",
    response_model=ModelOut,
    responses={**ERRORS, **example(200, examples.MODEL)},
    summary="Get a model",
    description="Answers the model: architecture, class names, the input it takes and on "
    "what scale, its own normalisation, evaluation metrics, the job it came from, its "
    "files, the ONNX check and backend timings, the backend this server serves it with and "
    "whether it is loaded. Another owner's model answers 404, exactly like a missing one; "
    "one of your job ids answers 404 naming the job's model, if it has one yet.",
)
def get_model(
    model_id: str, request: Request, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> ModelOut:
    row = models_service.get_owned(session, owner, model_id)
    server = model_server(request)
    return models_service.model_out(
        row, serving_backend=_backend_of(settings, server, row), loaded=server.is_loaded(row.id)
    )


@router.delete(
    "/{model_id:id}",
    status_code=204,
    responses=problems(
        401,
        404,
        409,
        what="model",
        custom={409: "An unfinished job starts from this model"},
        examples={
            409: examples.conflict(
                f"/api/v1/models/{examples.PIPELINE_MODEL_ID}",
                f"model {examples.PIPELINE_MODEL_ID} is the starting point of unfinished "
                f"job(s) {examples.TRAIN_JOB_ID}; cancel them or wait for them to finish first",
            )
        },
    ),
    summary="Delete a model: its row, its artifacts, and its copy in memory",
    description="Deletes the model: its row, its artifact folder and its copy in this "
    "server's memory; answers 204 with no body. Predictions for it stop at once on this "
    "server (other API processes may serve it for up to STILLHOUSE_SERVING_LOOKUP_TTL_SECONDS). "
    "While a job that has not finished starts from it (`source: model`), answers 409 naming "
    "the job(s).",
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
    "/{model_id:id}/artifacts/{name}",
    responses={
        **ERRORS,
        200: {
            "description": "The file: model.safetensors, model.json or model.onnx",
            "content": {
                "application/octet-stream": {},
                "application/json": {"example": examples.MODEL_JSON},
            },
        },
    },
    response_class=FileResponse,
    summary="Download an artifact",
    description="Answers one of the model's files as a download: `model.safetensors` (the "
    "weights, with the preprocessing buffers), `model.json` (architecture, classes, input, "
    "normalisation, metrics, the ONNX check and backend timings) or `model.onnx` (opset "
    "17, dynamic batch axis). Another name answers 404 listing the artifacts; a model "
    "without an ONNX file (its export or check failed) answers 404 with the reason "
    "recorded.",
)
def download_artifact(
    model_id: str, name: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    row = models_service.get_owned(session, owner, model_id)
    path = models_service.artifact_file(row, name, settings.artifact_dir)
    return FileResponse(path, media_type=models_service.ARTIFACTS[name], filename=name)


@router.post(
    "/{model_id:id}/predict",
    response_model=PredictResponse,
    responses={**PREDICT_ERRORS, **example(200, examples.PREDICT_RESPONSE)},
    summary="Predict: JSON tensors or PNG/JPEG files",
    description='JSON `{"inputs": [...]}` (N x C x H x W or N x H x W, on the training '
    "data's scale), a `.npy` body (`Content-Type: application/x-npy`, the same shapes and "
    "scale) or multipart `files` (PNG/JPEG, grey or colour, any "
    "size). The model's "
    "own resizing and normalisation apply. Answers one prediction per input, in order: the "
    "label, its index and softmax score, and the `k` most likely classes (a regression model "
    "answers `values`). Errors name the element or file at fault: 422 for values that are "
    "not finite numbers, ragged lists, a wrong rank or values outside the model's range "
    "(unless `scale` gives theirs); 413 past STILLHOUSE_PREDICT_MAX_BATCH inputs or files, "
    "or too many pixels; 415 for a body neither JSON, .npy nor multipart, or an image not PNG or "
    "JPEG; 503 when the model's artifacts cannot be loaded on this server.",
    openapi_extra={
        **BEARER_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PredictRequest.model_json_schema(),
                    "example": examples.PREDICT_REQUEST,
                },
                NPY_MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "One array in numpy.save's format: N x C x H x W "
                        "or N x H x W, on the model's scale like JSON inputs (uint8 pixels "
                        "for a 0-255 model).",
                    }
                },
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
        },
    },
)
async def predict(
    model_id: str,
    request: Request,
    k: Annotated[
        int,
        Query(
            ge=1, le=predictor.K_MAX, description="Classes in top_k (at most the model's count)."
        ),
    ] = predictor.K_DEFAULT,
) -> Response:
    start = time.perf_counter()
    # Settings without a dependency: FastAPI would run the sync getter in a thread.
    settings = get_settings()
    server = model_server(request)
    ref = await server.authorize(
        request.headers.get("authorization", ""), model_id, settings.artifact_dir
    )
    model = await server.model(ref)
    x = await read_inputs(request, model, settings)
    content = await predictor.predict(server, model, x, k)
    PREDICT_LATENCY.labels(model.id, "v1").observe(time.perf_counter() - start)
    return Response(content, media_type="application/json")


async def read_inputs(request: Request, model: LoadedModel, settings: Settings) -> np.ndarray:
    """The body, by its Content-Type, as the model's input: multipart image files, a
    `.npy` array, or a JSON `{"inputs": [...]}`."""
    limits = Limits(settings.predict_max_batch, settings.predict_max_pixels)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files = await image_files(request, max_files=settings.predict_max_batch)
        return await predictor.image_inputs(files, model, limits)
    if content_type == NPY_MEDIA_TYPE:
        body = await read_body(request, prediction_limit())
        return await predictor.npy_body_inputs(body, model, limits)
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise InputError(
            "header.Content-Type",
            f"{content_type!r} is not accepted: send application/json, {NPY_MEDIA_TYPE} "
            "or multipart/form-data",
            status=415,
        )
    body = await read_body(request, prediction_limit())
    return await predictor.json_body_inputs(body, model, limits)
