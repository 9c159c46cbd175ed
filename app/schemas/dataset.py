"""Dataset bodies: the upload's form fields and what the API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import NEXT_PAGE_TOKEN, UPLOAD_NAME
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


class DatasetByURL(BaseModel):
    """The JSON body of POST /api/v1/datasets: a dataset by reference, not uploaded."""

    model_config = ConfigDict(extra="forbid")

    name: PrintableText | None = Field(
        None, max_length=200, description="Defaults to the URL's last part."
    )
    url: str = Field(
        min_length=1,
        max_length=2000,
        description="file:///path or s3://bucket/prefix: an image folder (a subfolder per "
        "class) or WebDataset tar shards (a .tar, or a folder of them). It must lie under "
        "one of STILLHOUSE_DATASET_URL_ROOTS.",
    )
    format: Literal["image_folder", "webdataset"] = Field(
        "image_folder", description="How the images are laid out (docs/datasets.md)."
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Read every image at this many pixels a side (stretching). Without it "
        "the sampled images must share one square size, which all images are read at.",
    )


class DatasetOut(BaseModel):
    """An uploaded dataset, validated on arrival."""

    id: str = Field(
        description='The dataset\'s id (a UUID): a job spec names it as `{"id": ...}` wherever '
        "it takes a dataset."
    )
    name: str | None = Field(description=UPLOAD_NAME)
    format: Literal["npz", "image_folder", "webdataset"] = Field(
        description="What was uploaded, or how a dataset by URL is laid out."
    )
    url: str | None = Field(
        None,
        description="Where a dataset by reference is read from while training; null for an upload.",
    )
    num_samples: int = Field(
        description="Samples stored, both splits together (`meta.split_sizes` has each)."
    )
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
    size_bytes: int = Field(
        description="Size of the stored, validated file (of the index, for a dataset by URL)."
    )
    created_at: datetime = Field(description="When it was uploaded, RFC 3339 in UTC.")


class DatasetList(BaseModel):
    """One page of the caller's datasets, newest first."""

    datasets: list[DatasetOut] = Field(description="At most `page_size` datasets, newest first.")
    next_page_token: str | None = Field(description=NEXT_PAGE_TOKEN)
