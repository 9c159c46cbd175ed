"""Jobs: create (with idempotency), list, get, cancel, delete, events and metric history."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import job_states
from app.core.artifacts import artifact_store
from app.models import FINISHED_STATES, Job, JobEvent, JobState
from app.models.base import new_id
from app.schemas.job import JobOut, MetricHistory, MetricPoint
from app.schemas.job_spec import spec_inputs
from app.schemas.resources import Resources
from app.services import owned, workers
from app.services.errors import ConflictError, InvalidError, field_error
from app.services.spec_check import AnySpec, check_spec

log = logging.getLogger(__name__)


def request_hash(body: Any) -> str:
    """A hash of the request body that ignores key order and whitespace."""
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


# Live workers' (GPUs, labels), as `waiting_reason` weighs them.
WorkerFigures = list[tuple[int, list[str]]]


def live_workers(session: Session, stale_after_seconds: float) -> WorkerFigures:
    """Every live worker's GPUs and labels (app/services/workers.py)."""
    rows = workers.live_workers(session, stale_after_seconds)
    return [(row.gpus, list(row.labels or [])) for row in rows]


def waiting_reason(job: Job, workers: WorkerFigures | None) -> str | None:
    """Why a QUEUED job waits, when no live worker can claim it; None otherwise (or when
    `workers` were not looked up)."""
    if workers is None or job.state != JobState.QUEUED:
        return None
    needs = Resources.model_validate((job.spec or {}).get("resources") or {})
    if not workers:
        return "no live worker: start one (stillhouse worker) against this database"
    if any(needs.met_by(gpus, labels) for gpus, labels in workers):
        return None
    return (
        f"no live worker has {needs.describe()} (resources); {len(workers)} live "
        f"worker(s): see GET /api/v1/workers"
    )


def job_out(job: Job, workers: WorkerFigures | None = None) -> JobOut:
    """The job as the API answers it; with `workers` (live_workers), its waiting_reason."""
    return JobOut.model_validate(
        {
            "id": job.id,
            "kind": job.kind,
            "name": job.name,
            "state": job.state,
            "spec": job.spec,
            "stage": job.stage,
            # Always an object (the contract's fields, null until known), also while queued.
            "progress": job.progress or {},
            "metrics": job.metrics,
            "error": job.error,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "model_id": job.model_id,
            "report": job.report,
            "waiting_reason": waiting_reason(job, workers),
        }
    )


def get_owned(session: Session, owner: str, job_id: str) -> Job:
    return owned.get_owned(session, Job, owner=owner, id_=job_id, what="job")


def create_job(
    session: Session,
    *,
    owner: str,
    spec: AnySpec,
    raw_body: Any,
    idempotency_key: str | None,
    default_max_attempts: int,
) -> tuple[Job, bool]:
    """Validate and enqueue a job. Returns (job, created); a replayed key returns the first."""
    digest = request_hash(raw_body)
    if idempotency_key is not None:
        if len(idempotency_key) > 200:
            raise InvalidError([field_error("header.Idempotency-Key", "at most 200 characters")])
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    filled, errors = check_spec(session, owner, spec)
    if errors:
        raise InvalidError(errors)
    job_id = new_id()
    try:
        job_states.create(
            session,
            job_id=job_id,
            owner=owner,
            kind=filled.kind,
            name=filled.name,
            spec=filled.model_dump(mode="json"),
            inputs=spec_inputs(filled),
            max_attempts=filled.max_attempts or default_max_attempts,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        session.commit()
    except IntegrityError:
        # Two requests with the same key raced; the other one won.
        session.rollback()
        existing = _by_idempotency_key(session, owner, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, digest), False
    log.info("job %s (%s) queued for %s", job_id, filled.kind, owner)
    return get_owned(session, owner, job_id), True


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    ).scalar_one_or_none()


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise InvalidError(
            [field_error("header.Idempotency-Key", "already used with a different body")],
            detail="Idempotency-Key was already used with a different request body",
        )
    return existing


def list_jobs(
    session: Session,
    *,
    owner: str,
    state: str | None,
    kind: str | None,
    page_size: int,
    page_token: str | None,
) -> tuple[list[Job], str | None]:
    where = []
    if state is not None:
        where.append(Job.state == state)
    if kind is not None:
        where.append(Job.kind == kind)
    return owned.list_owned(
        session, Job, owner=owner, page_size=page_size, page_token=page_token, where=tuple(where)
    )


def cancel_job(session: Session, *, owner: str, job_id: str) -> Job:
    """QUEUED -> CANCELLED at once; RUNNING -> CANCELLING (the worker stops within a step)."""
    job = get_owned(session, owner, job_id)
    if job.state in FINISHED_STATES:
        if job.state == JobState.CANCELLED:
            return job
        raise ConflictError(f"job {job_id} already {job.state}")
    if job_states.request_cancel(session, job_id) is None:
        session.rollback()  # it finished (or was cancelled) since it was read
    else:
        session.commit()
    session.expire_all()
    return get_owned(session, owner, job_id)


def delete_job(session: Session, *, owner: str, job_id: str, artifact_dir: Path) -> None:
    job = get_owned(session, owner, job_id)
    if job.state not in FINISHED_STATES:
        raise ConflictError(
            f"job {job_id} is {job.state}; cancel it and wait for it to finish first"
        )
    if not job_states.delete_finished(session, job_id):
        session.rollback()
        raise ConflictError(f"job {job_id} changed state; try again")
    session.commit()
    # Checkpoints go with the job; its model (if any) stays until deleted on its own.
    artifact_store(artifact_dir).remove(artifact_dir / "jobs" / job_id)


def events_after(session: Session, job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
    return list(
        session.execute(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        ).scalars()
    )


def metric_history(session: Session, *, owner: str, job_id: str) -> MetricHistory:
    get_owned(session, owner, job_id)
    rows = session.execute(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metric")
        .order_by(JobEvent.id)
    ).scalars()
    points: list[MetricPoint] = []
    stages: dict[str, list[dict[str, Any]]] = {}
    for ev in rows:
        data = dict(ev.data)
        stage, epoch = data.pop("stage", None), data.pop("epoch", None)
        points.append(
            MetricPoint(event_id=ev.id, stage=stage, epoch=epoch, time=ev.created_at, values=data)
        )
        stages.setdefault(stage or "", []).append({"epoch": epoch, **data})
    return MetricHistory(job_id=job_id, metrics=points, stages=stages)
