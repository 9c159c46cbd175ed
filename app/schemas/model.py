"""Bodies of the Models API: finished students and their predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import NEXT_PAGE_TOKEN


class ModelInput(BaseModel):
    name: str = Field(description="Input tensor name (V2 metadata and the ONNX graph).")
    datatype: str = Field(description="Always FP32.")
    shape: list[int] = Field(description="[C, H, W] the model takes; other sizes are resized.")
    scale: float = Field(
        description="The training data's scale: inputs are 0-1 (1.0) or 0-255 (255.0)."
    )
    range: str = Field(description='"0-1" or "0-255".')


class Normalization(BaseModel):
    mean: list[float] | None = Field(description="Per-channel mean on the 0-1 scale.")
    std: list[float] | None = Field(description="Per-channel std on the 0-1 scale.")


class ModelOut(BaseModel):
    """A finished student, as this server serves it."""

    id: str = Field(
        description="The model's id (a UUID); also its model name on the /v2 routes and a "
        "model_id for a later job's `source: model`."
    )
    name: str | None = Field(
        description="The name of the job it came from; null when the job had none."
    )
    arch: str = Field(
        description="Its architecture: small_cnn or a torchvision classification model's name."
    )
    task: str = Field(
        "classification",
        description="classification, or regression (outputs are float targets, named in "
        "`classes`: target_0, ...; /predict answers `values`).",
    )
    classes: list[str] = Field(description="Class names, index order.")
    num_classes: int = Field(
        description="Outputs of the network: its classes, or its targets for regression."
    )
    input: ModelInput = Field(description="The input tensor it takes, and on what scale.")
    normalization: Normalization = Field(
        description="The normalisation the model applies to its inputs itself; clients send "
        "unnormalised values on `input.scale`."
    )
    metrics: dict[str, Any] = Field(description="Evaluation figures of the finished model.")
    job_id: str | None = Field(description="The job it came from.")
    params: int = Field(
        description="Number of parameters of the network (its preprocessing buffers are not "
        "counted)."
    )
    size_bytes: int = Field(description="Size of model.safetensors.")
    files: list[str] = Field(description="Artifacts to download from .../artifacts/{name}.")
    backends: dict[str, Any] | None = Field(
        None,
        description="PyTorch vs ONNX Runtime on CPU at batch 1 and 32 (ms), measured at "
        "export, and the preferred one.",
    )
    onnx: dict[str, Any] | None = Field(
        None, description="The ONNX export's check figures, or `error` saying why there is none."
    )
    int8: dict[str, Any] | None = Field(
        None,
        description="Only when its job asked for int8 (spec `export.int8`): the int8 model "
        "(model.int8.onnx) against fp32 ONNX on the evaluation set and on CPU: accuracy, "
        "fp32_accuracy, drop_points, max_drop, batch_1_ms, batch_32_ms, their fp32_ "
        "counterparts, speedup_batch_1, speedup_batch_32, size_bytes, and `served` (within "
        "max_drop and faster at batch 32) with its `reason`; or `error` saying why there is "
        "no int8 model.",
    )
    serving_backend: str = Field(description="The backend this server runs it with.")
    loaded: bool = Field(description="Whether it is in this server's memory now.")
    created_at: datetime = Field(
        description="When its job finished and stored it, RFC 3339 in UTC."
    )


class ModelList(BaseModel):
    """One page of the caller's models, newest first."""

    models: list[ModelOut] = Field(description="At most `page_size` models, newest first.")
    next_page_token: str | None = Field(description=NEXT_PAGE_TOKEN)


class PredictRequest(BaseModel):
    """JSON prediction input (the route also takes multipart `files`)."""

    inputs: list[Any] = Field(
        description="Nested lists, N x C x H x W or N x H x W, on the training data's scale "
        "(0-1 or 0-255, see the model's input.scale). Other sizes are resized, grey and "
        "colour converted.",
        examples=[[[[0.0, 0.5], [1.0, 0.25]]]],
    )
    scale: float | None = Field(
        None,
        gt=0,
        description="The scale `inputs` are on, when it is not the model's (e.g. 255 for "
        "0-255 pixels sent to a 0-1 model): they are rescaled. Without it, values outside "
        "the model's range answer 422 naming the range it expects.",
        examples=[255],
    )


class TopK(BaseModel):
    """One of the k most likely classes."""

    label: str = Field(description="The class's name.")
    score: float = Field(description="Its softmax probability, 0-1.")


class Prediction(BaseModel):
    label: str = Field(description="Name of the most likely class.")
    index: int = Field(description="Its index in the model's classes.")
    score: float = Field(description="Its softmax probability.")
    top_k: list[TopK] = Field(description="The k most likely classes, best first.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per input image, in order.")
