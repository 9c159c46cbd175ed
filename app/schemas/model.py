"""Bodies of the Models API: finished students and their predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
    id: str
    name: str | None
    arch: str
    task: str = Field(
        "classification",
        description="classification, or regression (outputs are float targets, named in "
        "`classes`: target_0, ...; /predict answers `values`).",
    )
    classes: list[str] = Field(description="Class names, index order.")
    num_classes: int
    input: ModelInput
    normalization: Normalization
    metrics: dict[str, Any] = Field(description="Evaluation figures of the finished model.")
    job_id: str | None = Field(description="The job it came from.")
    params: int
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
    serving_backend: str = Field(description="The backend this server runs it with.")
    loaded: bool = Field(description="Whether it is in this server's memory now.")
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]
    next_page_token: str | None


class PredictRequest(BaseModel):
    """JSON prediction input (the route also takes multipart `files`)."""

    inputs: list[Any] = Field(
        description="Nested lists, N x C x H x W or N x H x W, on the training data's scale "
        "(0-1 or 0-255, see the model's input.scale). Other sizes are resized, grey and "
        "colour converted.",
        examples=[[[[0.0, 0.5], [1.0, 0.25]]]],
    )


class TopK(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str = Field(description="Name of the most likely class.")
    index: int = Field(description="Its index in the model's classes.")
    score: float = Field(description="Its softmax probability.")
    top_k: list[TopK] = Field(description="The k most likely classes, best first.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per input image, in order.")
