"""Checkpoint bodies: the upload's form fields and what the API answers with."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.schemas.common import NEXT_PAGE_TOKEN, UPLOAD_NAME
from app.schemas.names import PrintableText


class CheckpointForm(BaseModel):
    """The form fields sent beside the `file` part of POST /api/v1/checkpoints."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(min_length=1, max_length=100, description="A name from the arch registry.")
    num_classes: int = Field(ge=1, le=100_000, description="Outputs of the checkpoint's head.")
    width: float | None = Field(
        None, gt=0, le=16, description="small_cnn only; read from the file when omitted."
    )
    in_channels: int | None = Field(
        None, description="1 or 3: the channels of the data the weights were trained on."
    )
    input_size: int | None = Field(
        None, ge=8, le=1024, description="Pixels a side the backbone was trained at."
    )
    mean: list[float] | None = Field(
        None, description='Normalisation mean per channel on the 0-1 scale: "0.5,0.5,0.5".'
    )
    std: list[float] | None = Field(None, description="Normalisation std per channel (> 0).")
    name: PrintableText | None = Field(
        None, max_length=200, description="Defaults to the file's name."
    )

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Form fields are text: accept "0.5,0.5,0.5" as well as a JSON list.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("not a JSON list of numbers") from None
        return [part.strip() for part in text.split(",")]

    @field_validator("in_channels")
    @classmethod
    def _channels(cls, value: int | None) -> int | None:
        if value is not None and value not in (1, 3):
            raise ValueError("must be 1 or 3")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or not all(math.isfinite(v) for v in value)):
            raise ValueError("must be 1 or 3 finite numbers")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not v > 0 for v in value):
            raise ValueError("every std must be > 0")
        return value


class CheckpointOut(BaseModel):
    """An uploaded checkpoint: teacher weights checked against their architecture."""

    id: str = Field(
        description="The checkpoint's id (a UUID): a job's teacher names it as "
        "`checkpoint_id` with `source: checkpoint`."
    )
    name: str | None = Field(description=UPLOAD_NAME)
    arch: str = Field(
        description="The architecture the weights fit: small_cnn or a torchvision "
        "classification model's name."
    )
    num_classes: int = Field(description="Outputs of the checkpoint's head (its classes).")
    in_channels: int = Field(
        description="Channels of the data the weights were trained on, 1 (grey) or 3 (colour): "
        "the form field, else read from the file, else 3."
    )
    width: float = Field(
        description="small_cnn's channel multiplier (the form field, else read from the file's "
        "channel counts); 1.0 for every other architecture."
    )
    input_size: int | None = Field(
        description="Pixels a side the backbone was trained at, when the upload said so; a "
        "teacher built from it resizes its inputs to this. Null: not given."
    )
    mean: list[float] | None = Field(
        description="Normalisation mean the weights expect, one value per channel on the 0-1 "
        "scale: the form field, else the file's `mean` buffer; null when unknown."
    )
    std: list[float] | None = Field(
        description="Normalisation standard deviation the weights expect, one value per "
        "channel on the 0-1 scale (each > 0); null when unknown."
    )
    meta: dict[str, Any] = Field(
        description="layout (backbone or network state dict), tensors, params, and the above."
    )
    size_bytes: int = Field(description="Size of the stored safetensors file, bytes.")
    created_at: datetime = Field(description="When it was uploaded, RFC 3339 in UTC.")


class CheckpointList(BaseModel):
    """One page of the caller's checkpoints, newest first."""

    checkpoints: list[CheckpointOut] = Field(
        description="At most `page_size` checkpoints, newest first."
    )
    next_page_token: str | None = Field(description=NEXT_PAGE_TOKEN)
