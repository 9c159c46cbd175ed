"""Uploaded datasets, validated on upload and stored as one .npz each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # What was uploaded: "npz" or "image_folder".
    format: Mapped[str] = mapped_column(String(20))
    num_samples: Mapped[int] = mapped_column(Integer)
    # Class names; empty for an unlabelled set (distillation only).
    classes: Mapped[list[Any]] = mapped_column(JSONType)
    labeled: Mapped[bool] = mapped_column(Boolean)
    # One sample's shape, [C, H, W].
    shape: Mapped[list[int]] = mapped_column(JSONType)
    # "uint8" (0-255) or "float32" (0-1): the scale predictions expect.
    dtype: Mapped[str] = mapped_column(String(20))
    # Per-class counts and per-channel mean/std, computed on upload.
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # File (relative to the artifact dir) with the validated arrays.
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
