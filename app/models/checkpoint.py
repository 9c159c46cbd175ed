"""Uploaded teacher weights (safetensors), used as `teacher.source = checkpoint`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    arch: Mapped[str] = mapped_column(String(100))
    num_classes: Mapped[int] = mapped_column(Integer)
    # Everything else the network needs to be rebuilt: width, in_channels, tensor names.
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # File (relative to the artifact dir).
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
