"""Finished students (and other trained models) that the service serves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class TrainedModel(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The job it came from; kept as a plain id so that deleting the job keeps the model.
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    arch: Mapped[str] = mapped_column(String(100))
    # The whole model.json (arch, classes, input shape, normalisation, metrics).
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)
    params: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Folder (relative to the artifact dir) holding model.safetensors, model.json, model.onnx.
    artifact_path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
