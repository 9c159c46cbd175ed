"""The jobs table as a queue: claim, heartbeat, finish, release, and the stale sweep.

Every function here is one short transaction. A worker owns a job while `worker_id` is its
id and the state is RUNNING or CANCELLING; every write a worker makes is fenced on that,
so a worker whose job was swept and claimed elsewhere changes nothing (it learns so from
a zero row count and stops).

Events: each event insert follows an UPDATE of its job's row in the same transaction. The
row lock orders concurrent writers of one job, so a job's event ids commit in increasing
order and a stream resuming after id N never misses one that commits late.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import Connection

from app.models import Job, JobEvent, JobState
from app.models.base import utcnow

log = logging.getLogger(__name__)

OWNED_STATES = (JobState.RUNNING, JobState.CANCELLING)


@dataclass
class ClaimedJob:
    id: str
    owner: str
    kind: str
    spec: dict[str, Any]
    attempts: int
    max_attempts: int


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None (JSON null), in nested dicts and lists.

    A diverging fit reports a NaN loss. Postgres refuses NaN in a JSON column (the write,
    and with it the job, would fail), and SQLite stores a token that strict JSON readers
    (browsers reading the event stream) reject.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def add_event(conn: Connection, job_id: str, type_: str, data: dict[str, Any]) -> None:
    """Insert one event; the caller has already updated (so locked) the job's row."""
    conn.execute(
        insert(JobEvent).values(
            job_id=job_id, type=type_, data=json_safe(data), created_at=utcnow()
        )
    )


def claim_next(engine: Engine, worker_id: str) -> ClaimedJob | None:
    """Take the oldest QUEUED job in one statement, or None when the queue is empty.

    Postgres: the subquery's `FOR UPDATE SKIP LOCKED` lets concurrent workers pass over a
    row another worker is claiming. SQLite: `engine` is the write engine, whose BEGIN
    IMMEDIATE serialises claims (see app.db.get_write_engine).
    """
    now = utcnow()
    oldest = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(Job)
        .where(Job.id == oldest, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
            cancel_requested=False,
            updated_at=now,
        )
        .returning(Job.id, Job.owner, Job.kind, Job.spec, Job.attempts, Job.max_attempts)
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).first()
        if row is None:
            return None
        job = ClaimedJob(*row)
        add_event(
            conn,
            job.id,
            "state",
            {"state": JobState.RUNNING, "attempt": job.attempts, "worker": worker_id},
        )
    log.info("claimed job %s (attempt %d)", job.id, job.attempts)
    return job


@dataclass
class LeaseStatus:
    owned: bool
    cancel_requested: bool


def heartbeat(engine: Engine, job_id: str, worker_id: str, *, write: bool) -> LeaseStatus:
    """Check (and with `write`, renew) our lease; also says whether cancel was asked."""
    with engine.begin() as conn:
        if write:
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker_id == worker_id, Job.state.in_(OWNED_STATES))
                .values(heartbeat_at=utcnow())
                .returning(Job.cancel_requested)
            ).first()
        else:
            row = conn.execute(
                select(Job.cancel_requested).where(
                    Job.id == job_id, Job.worker_id == worker_id, Job.state.in_(OWNED_STATES)
                )
            ).first()
    if row is None:
        return LeaseStatus(owned=False, cancel_requested=False)
    return LeaseStatus(owned=True, cancel_requested=bool(row[0]))


def update_owned(
    conn: Connection,
    job_id: str,
    worker_id: str,
    values: dict[str, Any],
    *,
    states: tuple[str, ...] = OWNED_STATES,
) -> bool:
    """Update a job we own; False when we no longer own it."""
    # json_safe leaves SQL expressions (attempts - 1) alone; it cleans the JSON columns.
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.state.in_(states))
        .values(**{k: json_safe(v) for k, v in values.items()}, updated_at=utcnow())
    )
    return result.rowcount == 1


def finish(
    engine: Engine,
    job_id: str,
    worker_id: str,
    *,
    state: JobState,
    error: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Move an owned job to a final state, with its event. False if we lost the job."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "finished_at": now,
        "error": error,
        "heartbeat_at": None,
        **(extra or {}),
    }
    with engine.begin() as conn:
        if not update_owned(conn, job_id, worker_id, values):
            return False
        data: dict[str, Any] = {"state": state}
        if error is not None:
            data["error"] = error
        add_event(conn, job_id, "state", data)
    log.info("job %s %s", job_id, state)
    return True


def release(engine: Engine, job_id: str, worker_id: str) -> bool:
    """Give a job back to the queue on a clean shutdown (the attempt is not counted).

    A job the user was cancelling is cancelled instead: nobody wants it resumed.
    """
    now = utcnow()
    with engine.begin() as conn:
        if update_owned(
            conn,
            job_id,
            worker_id,
            {"state": JobState.CANCELLED, "finished_at": now, "heartbeat_at": None},
            states=(JobState.CANCELLING,),
        ):
            add_event(conn, job_id, "state", {"state": JobState.CANCELLED})
            return True
        if not update_owned(
            conn,
            job_id,
            worker_id,
            {
                "state": JobState.QUEUED,
                "worker_id": None,
                "heartbeat_at": None,
                "attempts": Job.attempts - 1,
            },
            states=(JobState.RUNNING,),
        ):
            return False
        add_event(conn, job_id, "state", {"state": JobState.QUEUED, "reason": "worker shut down"})
    log.info("job %s released to the queue", job_id)
    return True


def requeue_stale(engine: Engine, stale_after_seconds: float) -> list[str]:
    """Put jobs whose worker stopped heartbeating back in the queue (or end them).

    RUNNING with attempts left -> QUEUED (it resumes from its checkpoint); RUNNING with
    none left -> FAILED; CANCELLING -> CANCELLED. Returns the ids it moved.
    """
    cutoff = utcnow() - timedelta(seconds=stale_after_seconds)
    moved: list[str] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(Job.id, Job.state, Job.attempts, Job.max_attempts)
            .where(Job.state.in_(OWNED_STATES), Job.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id, state, attempts, max_attempts in rows:
            fence = (Job.id == job_id, Job.state == state, Job.heartbeat_at < cutoff)
            if state == JobState.CANCELLING:
                values: dict[str, Any] = {"state": JobState.CANCELLED, "finished_at": utcnow()}
                data: dict[str, Any] = {"state": JobState.CANCELLED, "reason": "worker lost"}
            elif attempts >= max_attempts:
                error = {
                    "code": "worker_lost",
                    "message": f"the worker stopped heartbeating on each of {attempts} attempts",
                }
                values = {"state": JobState.FAILED, "finished_at": utcnow(), "error": error}
                data = {"state": JobState.FAILED, "error": error}
            else:
                values = {"state": JobState.QUEUED}
                data = {"state": JobState.QUEUED, "reason": "worker lost", "attempts": attempts}
            result = conn.execute(
                update(Job)
                .where(*fence)
                .values(**values, worker_id=None, heartbeat_at=None, updated_at=utcnow())
            )
            if result.rowcount == 1:
                add_event(conn, job_id, "state", data)
                moved.append(job_id)
    for job_id in moved:
        log.warning("job %s had a stale heartbeat; moved on", job_id)
    return moved
