"""Checkpoint bodies: the upload's form fields and what the API answers with."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    id: str
    name: str | None
    arch: str
    num_classes: int
    in_channels: int
    width: float
    input_size: int | None
    mean: list[float] | None = Field(description="Normalisation the weights expect, if known.")
    std: list[float] | None
    meta: dict[str, Any] = Field(
        description="layout (backbone or network state dict), tensors, params, and the above."
    )
    size_bytes: int
    created_at: datetime


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointOut]
    next_page_token: str | None
