"""The job state machine on SQLite and Postgres: the queue (claim, heartbeat, fencing,
sweep, release), success and failure, and the inputs a job reads."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Engine, select, update

from app.core import job_states
from app.db import get_write_engine, get_write_sessionmaker, make_engine
from app.models import Job, JobInput, JobState, TrainedModel
from app.models.base import utcnow
from app.schemas.job_spec import JobSpec
from app.services import jobs as jobs_service
from tests.helpers import events
from tests.helpers import job_row as row

SPEC = TypeAdapter(JobSpec)


def enqueue(spec: dict[str, Any], n: int = 1, *, owner: str = "alice") -> list[str]:
    """Submit jobs through the service the API calls (validation included)."""
    ids = []
    with get_write_sessionmaker()() as session:
        for _ in range(n):
            job, created = jobs_service.create_job(
                session,
                owner=owner,
                spec=SPEC.validate_python(spec),
                raw_body=spec,
                idempotency_key=None,
                default_max_attempts=3,
            )
            assert created
            ids.append(job.id)
    return ids


def set_columns(job_id: str, **values: Any) -> None:
    with get_write_engine().begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(**values))


def make_stale(job_id: str, seconds: float = 600) -> None:
    set_columns(job_id, heartbeat_at=utcnow() - timedelta(seconds=seconds))


# ------------------------------------------------------------------------------ claim
def test_claim_takes_the_oldest_queued_job(env, tiny_spec):
    engine = get_write_engine()
    first, second, third, cancelled = enqueue(tiny_spec, 4)
    now = utcnow()
    # Creation order is not insertion order here: the claim must go by created_at.
    set_columns(third, created_at=now - timedelta(minutes=3))
    set_columns(first, created_at=now - timedelta(minutes=2))
    set_columns(cancelled, created_at=now - timedelta(minutes=9))
    with get_write_sessionmaker()() as session:
        jobs_service.cancel_job(session, owner="alice", job_id=cancelled)

    before = utcnow()
    job = job_states.claim_next(engine, "w1")
    assert job is not None and job.id == third
    assert (job.owner, job.kind, job.attempts, job.max_attempts) == ("alice", "train", 1, 3)
    assert job.spec["train"]["epochs"] == tiny_spec["train"]["epochs"]
    claimed = row(third)
    assert claimed.state == JobState.RUNNING and claimed.worker_id == "w1"
    assert claimed.attempts == 1 and not claimed.cancel_requested
    assert claimed.started_at is not None and claimed.started_at >= before - timedelta(seconds=1)
    assert claimed.heartbeat_at is not None
    assert events(third)[-1][1:] == ("state", {"state": "RUNNING", "attempt": 1, "worker": "w1"})

    assert [job_states.claim_next(engine, "w1").id for _ in range(2)] == [first, second]  # type: ignore[union-attr]
    assert row(cancelled).state == JobState.CANCELLED


def test_claim_on_an_empty_queue_returns_none(env, tiny_spec):
    engine = get_write_engine()
    assert job_states.claim_next(engine, "w1") is None
    (job_id,) = enqueue(tiny_spec)
    assert job_states.claim_next(engine, "w1") is not None
    assert job_states.claim_next(engine, "w2") is None
    assert row(job_id).worker_id == "w1"


def _write_engine(url: str) -> Engine:
    """A worker's own engine, as a separate worker process would have."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    return engine


def _race(database_url: str, workers: int, tag: str) -> list[tuple[str, str]]:
    """`workers` threads, each with its own engine, claim until the queue is empty."""
    engines = [_write_engine(database_url) for _ in range(workers)]
    claims: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(workers)

    def work(worker_id: str, engine: Engine) -> None:
        try:
            start.wait()
            while (job := job_states.claim_next(engine, worker_id)) is not None:
                with lock:
                    claims.append((job.id, worker_id))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(f"{tag}-w{i}", e), daemon=True)
        for i, e in enumerate(engines)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for engine in engines:
        engine.dispose()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return claims


def test_concurrent_claims_never_take_a_job_twice(env, database_url, tiny_spec):
    for round_ in range(2):
        ids = enqueue(tiny_spec, 24)
        claims = _race(database_url, workers=6, tag=f"r{round_}")
        counts = Counter(job_id for job_id, _ in claims)
        assert sorted(counts) == sorted(ids), "every job claimed"
        assert max(counts.values()) == 1, "no job claimed twice"
        for job_id, worker_id in claims:
            job = row(job_id)
            assert (job.state, job.worker_id, job.attempts) == (JobState.RUNNING, worker_id, 1)
            running = [d for _, t, d in events(job_id) if d.get("state") == "RUNNING"]
            assert running == [{"state": "RUNNING", "attempt": 1, "worker": worker_id}]


# -------------------------------------------------------------------------- heartbeat
def test_heartbeat_renews_the_lease_and_reports_cancel(env, tiny_spec):
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    job_states.claim_next(engine, "w1")
    make_stale(job_id, 30)
    old = row(job_id).heartbeat_at

    status = job_states.heartbeat(engine, job_id, "w1", write=False)
    assert status.owned and not status.cancel_requested
    assert row(job_id).heartbeat_at == old, "a read-only check writes nothing"

    status = job_states.heartbeat(engine, job_id, "w1", write=True)
    assert status.owned and not status.cancel_requested
    renewed = row(job_id).heartbeat_at
    assert renewed is not None and old is not None and renewed > old + timedelta(seconds=25)

    with get_write_sessionmaker()() as session:
        assert jobs_service.cancel_job(session, owner="alice", job_id=job_id).state == "CANCELLING"
    for write in (False, True):
        status = job_states.heartbeat(engine, job_id, "w1", write=write)
        assert status.owned and status.cancel_requested
    assert not job_states.heartbeat(engine, job_id, "someone-else", write=True).owned


# --------------------------------------------------------------------------- fencing
def test_a_swept_worker_cannot_touch_the_job_again(env, tiny_spec):
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    job_states.claim_next(engine, "w1")
    make_stale(job_id)
    assert job_states.requeue_stale(engine, stale_after_seconds=60) == [job_id]
    again = job_states.claim_next(engine, "w2")
    assert again is not None and again.id == job_id and again.attempts == 2

    # w1 wakes up: every write it tries is refused, and nothing changes.
    with engine.begin() as conn:
        assert not job_states.update_owned(conn, job_id, "w1", {"progress": {"epoch": 99}})
    assert not job_states.finish(engine, job_id, "w1", state=JobState.SUCCEEDED)
    assert not job_states.finish(engine, job_id, "w1", state=JobState.FAILED, error={"code": "x"})
    assert not job_states.release(engine, job_id, "w1")
    assert not job_states.heartbeat(engine, job_id, "w1", write=True).owned
    job = row(job_id)
    assert (job.state, job.worker_id, job.progress) == (JobState.RUNNING, "w2", None)

    assert job_states.finish(engine, job_id, "w2", state=JobState.SUCCEEDED)
    assert row(job_id).state == JobState.SUCCEEDED
    # A finished job is nobody's: its former owner cannot write to it either.
    assert not job_states.finish(engine, job_id, "w2", state=JobState.FAILED)
    assert row(job_id).state == JobState.SUCCEEDED


# ----------------------------------------------------------------------- stale sweep
def test_requeue_stale(env, tiny_spec):
    engine = get_write_engine()
    fresh, stale, exhausted, cancelling = enqueue(tiny_spec, 4)
    for worker_id in ("w-fresh", "w-stale", "w-exhausted", "w-cancelling"):
        assert job_states.claim_next(engine, worker_id) is not None
    set_columns(exhausted, attempts=3, max_attempts=3)
    with get_write_sessionmaker()() as session:
        jobs_service.cancel_job(session, owner="alice", job_id=cancelling)
    for job_id in (stale, exhausted, cancelling):
        make_stale(job_id, 120)
    make_stale(fresh, 5)

    moved = job_states.requeue_stale(engine, stale_after_seconds=60)
    assert sorted(moved) == sorted([stale, exhausted, cancelling])

    job = row(fresh)
    assert (job.state, job.worker_id) == (JobState.RUNNING, "w-fresh")

    job = row(stale)
    assert (job.state, job.worker_id, job.heartbeat_at) == (JobState.QUEUED, None, None)
    assert job.attempts == 1, "the lost attempt counts"
    assert events(stale)[-1][2] == {"state": "QUEUED", "reason": "worker lost", "attempts": 1}

    job = row(exhausted)
    assert job.state == JobState.FAILED and job.finished_at is not None
    assert job.error is not None and job.error["code"] == "worker_lost"
    assert "3 attempts" in job.error["message"]
    assert events(exhausted)[-1][2]["state"] == "FAILED"

    job = row(cancelling)
    assert job.state == JobState.CANCELLED and job.finished_at is not None
    assert events(cancelling)[-1][2] == {"state": "CANCELLED", "reason": "worker lost"}

    assert job_states.requeue_stale(engine, stale_after_seconds=60) == []
    # The requeued job is claimed again as its second attempt, keeping its first start.
    started = row(stale).started_at
    again = job_states.claim_next(engine, "w-next")
    assert again is not None and again.id == stale and again.attempts == 2
    assert row(stale).started_at == started


# --------------------------------------------------------------------------- release
def test_release_returns_the_job_and_refunds_the_attempt(env, tiny_spec):
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    job_states.claim_next(engine, "w1")
    assert job_states.release(engine, job_id, "w1")
    job = row(job_id)
    assert (job.state, job.attempts, job.worker_id, job.heartbeat_at) == (
        JobState.QUEUED,
        0,
        None,
        None,
    )
    assert events(job_id)[-1][2] == {"state": "QUEUED", "reason": "worker shut down"}
    again = job_states.claim_next(engine, "w2")
    assert again is not None and again.id == job_id and again.attempts == 1
    assert not job_states.release(engine, job_id, "w1")


def test_release_of_a_cancelling_job_cancels_it(env, tiny_spec):
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    job_states.claim_next(engine, "w1")
    with get_write_sessionmaker()() as session:
        jobs_service.cancel_job(session, owner="alice", job_id=job_id)
    assert job_states.release(engine, job_id, "w1")
    job = row(job_id)
    assert job.state == JobState.CANCELLED and job.finished_at is not None
    assert events(job_id)[-1][2] == {"state": "CANCELLED"}
    assert job_states.claim_next(engine, "w2") is None


# ---------------------------------------------------------------------------- events
def test_event_ids_increase_per_job(env, tiny_spec):
    engine = get_write_engine()
    a, b = enqueue(tiny_spec, 2)
    job_states.claim_next(engine, "wa")
    job_states.claim_next(engine, "wb")
    for i in range(5):
        for job_id, worker_id in ((a, "wa"), (b, "wb")):
            with engine.begin() as conn:
                assert job_states.update_owned(conn, job_id, worker_id, {"stage": "train"})
                job_states.add_event(conn, job_id, "log", {"message": f"{job_id[:4]} {i}"})
    job_states.finish(engine, a, "wa", state=JobState.SUCCEEDED)
    for job_id in (a, b):
        got = events(job_id)
        ids = [i for i, _, _ in got]
        assert ids == sorted(set(ids))
        logs = [d["message"] for _, t, d in got if t == "log"]
        assert logs == [f"{job_id[:4]} {i}" for i in range(5)], "ids follow write order"
        assert got[0][2] == {"state": "QUEUED"}
    assert events(a)[-1][2] == {"state": "SUCCEEDED"}


def test_non_finite_numbers_are_written_as_null(env, tiny_spec):
    # A diverging fit reports a NaN loss: Postgres refused it (the job failed with a
    # DataError), SQLite stored a NaN token that strict JSON readers reject.
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    job_states.claim_next(engine, "w")
    nan, inf = float("nan"), float("inf")
    with engine.begin() as conn:
        assert job_states.update_owned(
            conn, job_id, "w", {"metrics": {"loss": nan, "accuracy": 0.5}, "stage": "train"}
        )
        job_states.add_event(conn, job_id, "metric", {"loss": inf, "per_class": [1.0, -inf]})
    assert job_states.succeed(engine, job_id, "w", values={"report": {"x": nan}}, model=None)
    job = row(job_id)
    assert job.metrics == {"loss": None, "accuracy": 0.5}
    assert job.report == {"x": None}
    metric = [d for _, t, d in events(job_id) if t == "metric"]
    assert metric == [{"loss": None, "per_class": [1.0, None]}]


# ------------------------------------------------------------------- success, inputs
def test_succeed_records_the_model_row_with_the_job_or_nothing(env, tiny_spec):
    engine = get_write_engine()
    first, second = enqueue(tiny_spec, 2)
    job_states.claim_next(engine, "w")
    model = {
        "id": "11111111-1111-1111-1111-111111111111",
        "owner": "alice",
        "name": "tiny",
        "job_id": first,
        "arch": "small_cnn",
        "meta": {"loss": float("nan")},
        "params": 10,
        "size_bytes": 40,
        "artifact_path": "models/x",
    }
    assert job_states.succeed(engine, first, "w", values={"metrics": {"a": 1}}, model=model)
    job = row(first)
    assert (job.state, job.model_id, job.metrics) == ("SUCCEEDED", model["id"], {"a": 1})
    assert events(first)[-1][2]["model_id"] == model["id"]
    with get_write_engine().connect() as conn:
        meta = conn.execute(select(TrainedModel.meta).where(TrainedModel.id == model["id"]))
        assert meta.scalar_one() == {"loss": None}
    # A job being cancelled is not ours to succeed: neither it nor the model row changes.
    job_states.claim_next(engine, "w")
    with get_write_sessionmaker()() as session:
        jobs_service.cancel_job(session, owner="alice", job_id=second)
    other = {**model, "id": "22222222-2222-2222-2222-222222222222", "job_id": second}
    assert not job_states.succeed(engine, second, "w", values={}, model=other)
    assert row(second).state == "CANCELLING"
    with get_write_engine().connect() as conn:
        assert (
            conn.execute(select(TrainedModel.id).where(TrainedModel.id == other["id"])).all() == []
        )


def test_inputs_are_recorded_and_answer_which_unfinished_jobs_use_a_row(env, tiny_spec):
    engine = get_write_engine()
    (job_id,) = enqueue(tiny_spec)
    with engine.begin() as conn:
        job_states.create(
            conn,
            job_id="33333333-3333-3333-3333-333333333333",
            owner="alice",
            kind="train",
            name=None,
            spec={},
            inputs=[("dataset", "d1"), ("model", "m1"), ("dataset", "d1")],
            max_attempts=3,
            idempotency_key=None,
            request_hash="x",
        )
    with engine.connect() as conn:
        stored = conn.execute(
            select(JobInput.kind, JobInput.ref_id).where(JobInput.job_id.like("3333%"))
        ).all()
        assert sorted(stored) == [("dataset", "d1"), ("model", "m1")]
        using = job_states.unfinished_jobs_using
        assert using(conn, owner="alice", kind="dataset", ref_id="d1") == [
            "33333333-3333-3333-3333-333333333333"
        ]
        assert using(conn, owner="bob", kind="dataset", ref_id="d1") == []
        assert using(conn, owner="alice", kind="checkpoint", ref_id="d1") == []
    # A finished job uses nothing; deleting it takes its inputs and events along.
    with engine.begin() as conn:
        assert job_states.request_cancel(conn, "33333333-3333-3333-3333-333333333333") == (
            JobState.CANCELLED
        )
        assert (
            job_states.unfinished_jobs_using(conn, owner="alice", kind="model", ref_id="m1") == []
        )
        assert not job_states.delete_finished(conn, job_id), "a queued job is not deleted"
        assert job_states.delete_finished(conn, "33333333-3333-3333-3333-333333333333")
    with engine.connect() as conn:
        assert conn.execute(select(JobInput).where(JobInput.job_id.like("3333%"))).all() == []
    assert events("33333333-3333-3333-3333-333333333333") == []
