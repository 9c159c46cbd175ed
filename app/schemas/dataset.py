"""Dataset bodies: the upload's form fields and what the API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.names import PrintableText


class DatasetForm(BaseModel):
    """The form fields sent beside the `file` part of POST /api/v1/datasets."""

    model_config = ConfigDict(extra="forbid")

    name: PrintableText | None = Field(
        None, max_length=200, description="Defaults to the file's name."
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Resize every image to this many pixels a side (stretching, not cropping). "
        "Without it all images must already share one square size.",
    )


class DatasetOut(BaseModel):
    id: str
    name: str | None
    format: Literal["npz", "image_folder"] = Field(description="What was uploaded.")
    num_samples: int
    task: str = Field(
        "classification",
        description="classification (integer y), or regression (float y: `targets` values a "
        "sample, no classes).",
    )
    targets: int | None = Field(None, description="Regression targets a sample.")
    num_classes: int = Field(description="len(classes); 0 for an unlabelled set.")
    classes: list[str] = Field(description="Class names, index order; [] when unlabelled.")
    labeled: bool = Field(description="False: the set serves distillation only.")
    shape: list[int] = Field(description="One sample's shape, [C, H, W].")
    dtype: Literal["uint8", "float32"] = Field(
        description="uint8 (0-255) or float32 (0-1): the scale predictions expect."
    )
    meta: dict[str, Any] = Field(
        description="class_counts, split_sizes (the fixed train/test holdout), and per-channel "
        "mean/std on the 0-1 scale computed from the train split."
    )
    size_bytes: int = Field(description="Size of the stored, validated file.")
    created_at: datetime


class DatasetList(BaseModel):
    datasets: list[DatasetOut]
    next_page_token: str | None
