"""Run a job spec through the real path in-process: API validation, queue, worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.config import get_settings
from app.db import get_sessionmaker, get_write_sessionmaker
from app.models import Job, JobEvent
from app.schemas.job_spec import parse_spec
from app.services.jobs import create_job
from tests.helpers import job_row
from worker.main import Worker


def submit(spec: dict[str, Any], owner: str = "alice") -> str:
    with get_write_sessionmaker()() as session:
        job, _ = create_job(
            session,
            owner=owner,
            spec=parse_spec(spec),
            raw_body=spec,
            idempotency_key=None,
            default_max_attempts=3,
        )
        return job.id


def run_one() -> None:
    Worker(get_settings(), device="cpu").run(max_jobs=1)


def run(spec: dict[str, Any], owner: str = "alice") -> Job:
    job_id = submit(spec, owner)
    run_one()
    return job_row(job_id)


def events(job_id: str, type_: str | None = None) -> list[dict[str, Any]]:
    with get_sessionmaker()() as session:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        if type_ is not None:
            stmt = stmt.where(JobEvent.type == type_)
        return [{"id": e.id, "type": e.type, **e.data} for e in session.execute(stmt).scalars()]
