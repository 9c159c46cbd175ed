"""The job state machine: every transition of a job, each with the event it writes.

    QUEUED --claim--> RUNNING --succeed--> SUCCEEDED
       |                 |---fail------> FAILED
       |                 |---cancel----> CANCELLING --finish--> CANCELLED
       |                 |---release / stale sweep--> QUEUED (resumes from its checkpoint)
       '---cancel--> CANCELLED

The API creates, cancels and deletes jobs; the worker claims, heartbeats, reports,
succeeds, fails, releases and sweeps. Both call these functions, and nothing else writes
a job's `state`. Each is one short transaction, or runs inside the caller's (`create`
and `request_cancel` take the API's session, which holds the spec check's locks).

Ownership: a worker owns a job while `worker_id` is its id and the state is RUNNING or
CANCELLING; every write a worker makes is fenced on that, so a worker whose job was swept
and claimed elsewhere changes nothing (it learns so from a zero row count and stops).

Events: each event insert follows an UPDATE (or INSERT) of its job's row in the same
transaction. The row lock orders concurrent writers of one job, so a job's event ids
commit in increasing order and a stream resuming after id N never misses one that commits
late.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.core.safe_json import json_safe
from app.models import FINISHED_STATES, Job, JobEvent, JobInput, JobState, TrainedModel
from app.models.base import utcnow

log = logging.getLogger(__name__)

OWNED_STATES = (JobState.RUNNING, JobState.CANCELLING)
FINISHED = sorted(s.value for s in FINISHED_STATES)
# A connection (the worker) or an ORM session (the API): both execute Core statements.
Executor = Connection | Session
# The Postgres channel a newly QUEUED job is announced on (its id is the payload).
JOBS_CHANNEL = "stillhouse_jobs"


@dataclass
class ClaimedJob:
    id: str
    owner: str
    kind: str
    spec: dict[str, Any]
    attempts: int
    max_attempts: int


@dataclass
class LeaseStatus:
    owned: bool
    cancel_requested: bool


def add_event(conn: Executor, job_id: str, type_: str, data: dict[str, Any]) -> None:
    """Insert one event; the caller has already written (so locked) the job's row.

    A job that becomes QUEUED (submitted, given back, requeued) also notifies the
    `JOBS_CHANNEL` on Postgres: idle workers LISTEN on it (worker/wakeup.py) and claim at
    once instead of at their next poll. Postgres delivers a notification when the
    transaction commits, never for one rolled back.
    """
    conn.execute(
        insert(JobEvent).values(
            job_id=job_id, type=type_, data=json_safe(data), created_at=utcnow()
        )
    )
    if type_ == "state" and data.get("state") == JobState.QUEUED and _is_postgres(conn):
        conn.execute(
            text("SELECT pg_notify(:channel, :job)"), {"channel": JOBS_CHANNEL, "job": job_id}
        )


def _is_postgres(conn: Executor) -> bool:
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return bind.dialect.name == "postgresql"


# ------------------------------------------------------------------------ the API's
def create(
    conn: Executor,
    *,
    job_id: str,
    owner: str,
    kind: str,
    name: str | None,
    spec: dict[str, Any],
    inputs: Iterable[tuple[str, str]],
    max_attempts: int,
    idempotency_key: str | None,
    request_hash: str,
) -> None:
    """A new QUEUED job, the datasets, checkpoints and models it reads (`inputs`, as
    (kind, id) pairs), and its first event. The caller commits."""
    now = utcnow()
    needs = spec.get("resources") or {}
    conn.execute(
        insert(Job).values(
            id=job_id,
            owner=owner,
            kind=kind,
            name=name,
            state=JobState.QUEUED,
            spec=spec,
            gpus=int(needs.get("gpus", 0)),
            labels=",".join(sorted(needs.get("labels", []))),
            attempts=0,
            max_attempts=max_attempts,
            cancel_requested=False,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            created_at=now,
            updated_at=now,
        )
    )
    rows = [{"job_id": job_id, "kind": k, "ref_id": r} for k, r in sorted(set(inputs))]
    if rows:
        conn.execute(insert(JobInput), rows)
    add_event(conn, job_id, "state", {"state": JobState.QUEUED})


def request_cancel(conn: Executor, job_id: str) -> JobState | None:
    """QUEUED -> CANCELLED at once; RUNNING -> CANCELLING (its worker stops within a
    step). The new state, or None when the job was in neither (the caller commits).

    Compare-and-set on the state: a worker may claim the job between a read and this.
    """
    now = utcnow()
    for from_state, to_state in (
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.CANCELLING),
    ):
        values: dict[str, Any] = {"state": to_state, "cancel_requested": True, "updated_at": now}
        if to_state == JobState.CANCELLED:
            values["finished_at"] = now
        result = conn.execute(
            update(Job).where(Job.id == job_id, Job.state == from_state).values(**values)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            add_event(conn, job_id, "state", {"state": to_state, "reason": "cancel requested"})
            return to_state
    return None


def delete_finished(conn: Executor, job_id: str) -> bool:
    """Delete a finished job with its events and inputs; False if it is not finished
    (it may have changed state since it was read). The caller commits."""
    conn.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    conn.execute(delete(JobInput).where(JobInput.job_id == job_id))
    result = conn.execute(delete(Job).where(Job.id == job_id, Job.state.in_(FINISHED)))
    return result.rowcount == 1  # type: ignore[attr-defined]


def unfinished_jobs_using(conn: Executor, *, owner: str, kind: str, ref_id: str) -> list[str]:
    """Ids of the owner's unfinished jobs that read the `kind` row `ref_id`."""
    rows = conn.execute(
        select(Job.id)
        .join(JobInput, JobInput.job_id == Job.id)
        .where(
            JobInput.kind == kind,
            JobInput.ref_id == ref_id,
            Job.owner == owner,
            Job.state.not_in(FINISHED),
        )
        .order_by(Job.created_at)
    )
    return [job_id for (job_id,) in rows]


# --------------------------------------------------------------------- the worker's
# Queued jobs a labelled worker looks through, oldest first, for one whose labels it has.
CLAIM_CANDIDATES = 50


def claim_next(
    engine: Engine, worker_id: str, *, gpus: int = 0, labels: Iterable[str] = ()
) -> ClaimedJob | None:
    """Take the oldest QUEUED job this worker can run (no more `gpus` than it has, every
    label among its `labels`), or None when there is none.

    A worker without labels claims in one statement (below). A labelled one reads the
    oldest candidates within its GPUs, keeps those whose labels it has, and claims the
    first it can: the conditional update makes a race for one job end with one winner
    (Postgres locks the row and rechecks its state; SQLite serialises writers).
    """
    own = set(labels)
    if not own:
        return _claim(engine, worker_id, gpus=gpus)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Job.labels)
            .where(Job.state == JobState.QUEUED, Job.gpus <= gpus)
            .order_by(Job.created_at, Job.id)
            .limit(CLAIM_CANDIDATES)
        ).all()
    for job_id, needed in rows:
        if set(filter(None, needed.split(","))) <= own:
            claimed = _claim(engine, worker_id, gpus=gpus, job_id=job_id)
            if claimed is not None:
                return claimed
    return None


def _claim(
    engine: Engine, worker_id: str, *, gpus: int, job_id: str | None = None
) -> ClaimedJob | None:
    """Claim `job_id`, or (None) the oldest QUEUED job within `gpus` that needs no labels,
    in one statement.

    Postgres: the subquery's `FOR UPDATE SKIP LOCKED` lets concurrent workers pass over a
    row another worker is claiming. SQLite: `engine` is the write engine, whose BEGIN
    IMMEDIATE serialises claims (see app.db.get_write_engine).
    """
    now = utcnow()
    oldest = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED, Job.gpus <= gpus, Job.labels == "")
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    target = oldest if job_id is None else job_id
    stmt = (
        update(Job)
        .where(Job.id == target, Job.state == JobState.QUEUED)
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


def heartbeat(engine: Engine, job_id: str, worker_id: str, *, write: bool) -> LeaseStatus:
    """Check (and with `write`, renew) our lease; also says whether cancel was asked."""
    owned = (Job.id == job_id, Job.worker_id == worker_id, Job.state.in_(OWNED_STATES))
    with engine.begin() as conn:
        if write:
            row = conn.execute(
                update(Job)
                .where(*owned)
                .values(heartbeat_at=utcnow())
                .returning(Job.cancel_requested)
            ).first()
        else:
            row = conn.execute(select(Job.cancel_requested).where(*owned)).first()
    if row is None:
        return LeaseStatus(owned=False, cancel_requested=False)
    return LeaseStatus(owned=True, cancel_requested=bool(row[0]))


def update_owned(
    conn: Executor,
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
    return result.rowcount == 1  # type: ignore[attr-defined]


def record(
    engine: Engine,
    job_id: str,
    worker_id: str,
    values: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]],
) -> bool:
    """A running job's progress, metrics or logs: `values` on its row (its stage,
    progress, latest metrics) and `events`, fenced on the lease. False if it is lost."""
    with engine.begin() as conn:
        if not update_owned(conn, job_id, worker_id, values):
            return False
        for type_, data in events:
            add_event(conn, job_id, type_, data)
    return True


def succeed(
    engine: Engine,
    job_id: str,
    worker_id: str,
    *,
    values: dict[str, Any],
    model: dict[str, Any] | None,
) -> bool:
    """RUNNING -> SUCCEEDED with the job's results (`values`: metrics, report, progress)
    and its model's row (`model`, the TrainedModel columns) in one transaction.

    False, with nothing written, when the job is no longer ours to succeed: the user is
    cancelling it (CANCELLING), or it was swept to another worker.
    """
    now = utcnow()
    values = dict(values)
    try:
        with engine.begin() as conn:
            if model is not None:
                values["model_id"] = model["id"]
                conn.execute(insert(TrainedModel).values(**json_safe(model), created_at=now))
            ok = update_owned(
                conn,
                job_id,
                worker_id,
                {**values, "state": JobState.SUCCEEDED, "finished_at": now, "heartbeat_at": None},
                states=(JobState.RUNNING,),
            )
            if not ok:
                raise _NotOwnedError  # leaves the block: the model row is rolled back too
            add_event(
                conn,
                job_id,
                "state",
                {
                    "state": JobState.SUCCEEDED,
                    "model_id": values.get("model_id"),
                    "metrics": values.get("metrics"),
                },
            )
    except _NotOwnedError:
        return False
    log.info("job %s succeeded", job_id)
    return True


class _NotOwnedError(Exception):
    """The job is no longer ours to succeed (cancelled, or swept to another worker)."""


def finish(
    engine: Engine,
    job_id: str,
    worker_id: str,
    *,
    state: JobState,
    error: dict[str, Any] | None = None,
) -> bool:
    """Move an owned job to FAILED (with `error`: code and message) or CANCELLED, with
    its event. False if we lost the job."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "finished_at": now,
        "error": error,
        "heartbeat_at": None,
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


def fail(engine: Engine, job_id: str, worker_id: str, *, code: str, message: str) -> bool:
    return finish(
        engine, job_id, worker_id, state=JobState.FAILED, error={"code": code, "message": message}
    )


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
