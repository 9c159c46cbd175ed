"""The workers table: each running worker, what it can run, and when it last said so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow


class WorkerRecord(Base):
    __tablename__ = "workers"

    # The worker's id, as in jobs.worker_id: host:pid:random.
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # The training device's kind: "cpu" or "cuda".
    device: Mapped[str] = mapped_column(String(16))
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    # Memory of its first GPU (bytes); 0 without one.
    gpu_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    labels: Mapped[list[Any]] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Renewed every STILLHOUSE_HEARTBEAT_SECONDS; older than STILLHOUSE_STALE_AFTER_SECONDS
    # means gone (killed, machine lost): such rows are not shown and are swept.
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The job it runs now, if any.
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
