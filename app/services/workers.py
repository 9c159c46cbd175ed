"""The live workers: rows of the workers table seen within the stale period."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import WorkerRecord
from app.models.base import utcnow


def live_workers(session: Session, stale_after_seconds: float) -> Sequence[WorkerRecord]:
    """Workers whose last heartbeat is younger than `stale_after_seconds`, oldest first
    (a worker that died ages out; one stopped cleanly removed its row)."""
    since = utcnow() - timedelta(seconds=stale_after_seconds)
    return session.scalars(
        select(WorkerRecord)
        .where(WorkerRecord.last_seen >= since)
        .order_by(WorkerRecord.started_at, WorkerRecord.id)
    ).all()
