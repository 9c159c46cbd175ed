"""The worker in-process, on SQLite and Postgres: success, failure, cancel, and shutdown/resume."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from sqlalchemy import insert, select

from app.config import get_settings
from app.core import job_states
from app.db import get_write_engine, get_write_sessionmaker, reset_engines
from app.models import Job, JobState, TrainedModel
from app.models.base import new_id, utcnow
from tests.helpers import events, free_port, long_train_spec, tiny_pipeline_spec, wait_for
from worker.main import Worker


def submit(client, headers: dict[str, str], spec: dict[str, Any]) -> str:
    r = client.post("/api/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def metric_epochs(evs: list[tuple[int, str, dict[str, Any]]], stage: str = "train") -> list[int]:
    return [d["epoch"] for _, t, d in evs if t == "metric" and d["stage"] == stage]


class Running:
    """A Worker looping in a thread, as `stillhouse worker` does in its main thread."""

    def __init__(self, max_jobs: int | None = 1) -> None:
        self.worker = Worker(get_settings(), device="cpu")
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(max_jobs,), daemon=True)
        self.thread.start()

    def _run(self, max_jobs: int | None) -> None:
        try:
            self.worker.run(max_jobs=max_jobs)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def shutdown(self) -> None:
        """What the SIGTERM handler does."""
        self.worker.stopping.set()
        if self.worker.current is not None:
            self.worker.current.shutdown.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the worker did not stop within {timeout}s"
        assert self.error is None, self.error


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(max_jobs: int | None = 1) -> Running:
        started.append(Running(max_jobs))
        return started[-1]

    yield start
    # Never leave a training thread behind, whatever the test did.
    for r in started:
        r.shutdown()
        r.thread.join(30)


# ----------------------------------------------------------------------------- success
def test_tiny_train_job_succeeds(client, alice, tiny_spec, settings):
    tiny_spec["train"]["epochs"] = 3
    job_id = submit(client, alice, tiny_spec)
    Worker(get_settings(), device="cpu").run(max_jobs=1)

    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "SUCCEEDED", job
    assert job["error"] is None and job["attempts"] == 1
    assert job["started_at"] <= job["finished_at"]
    assert 0.0 <= job["metrics"]["accuracy"] <= 1.0
    assert job["metrics"]["eval_samples"] > 0
    assert job["progress"]["fraction"] == 1.0

    model_id = job["model_id"]
    assert model_id
    with get_write_sessionmaker()() as session:
        model = session.get(TrainedModel, model_id)
        assert model is not None
        assert (model.owner, model.job_id, model.arch) == ("alice", job_id, "small_cnn")
        assert model.params > 0 and model.size_bytes > 0
        folder = settings.artifact_dir / model.artifact_path
    assert (folder / "model.safetensors").stat().st_size == model.size_bytes
    assert (folder / "model.json").exists()

    evs = events(job_id)
    states = [d["state"] for _, t, d in evs if t == "state"]
    assert states == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert evs[-1][2]["model_id"] == model_id
    assert metric_epochs(evs) == [1, 2, 3]
    metric = next(d for _, t, d in evs if t == "metric")
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_loss", "lr"} <= set(metric)

    progress = [d for _, t, d in evs if t == "progress" and "step" in d]
    assert progress, "progress events while training"
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for p in progress:
        assert p["stage"] == "train" and p["epochs"] == 3 and 1 <= p["epoch"] <= 3
        assert p["eta_seconds"] is not None and p["eta_seconds"] >= 0
    etas = [p["eta_seconds"] for p in progress]
    assert etas[-1] <= etas[0], "the ETA counts down"

    history = client.get(f"/api/v1/jobs/{job_id}/metrics", headers=alice).json()
    assert [p["epoch"] for p in history["stages"]["train"]] == [1, 2, 3]


# ----------------------------------------------------------------------------- failure
def _store_unchecked(spec: dict[str, Any]) -> str:
    """Put a job in the queue behind the API's back (as a spec stored before a check existed)."""
    job_id, now = new_id(), utcnow()
    with get_write_engine().begin() as conn:
        conn.execute(
            insert(Job).values(
                id=job_id,
                owner="alice",
                kind=spec.get("kind", "train"),
                state=JobState.QUEUED,
                spec=spec,
                attempts=0,
                max_attempts=3,
                cancel_requested=False,
                created_at=now,
                updated_at=now,
            )
        )
    return job_id


@pytest.mark.parametrize(
    ("spec", "code", "words"),
    [
        (
            {
                "kind": "train",
                "model": {"arch": "small_cnn", "width": 0.25},
                "train": {"dataset": {"id": "deleted-upload"}, "epochs": 1, "min_steps": 0},
            },
            "unavailable",
            "dataset deleted-upload does not exist",
        ),
        ({"kind": "train", "model": {"arch": "small_cnn"}}, "internal", "train"),
    ],
    ids=["missing-upload", "unparseable-spec"],
)
def test_failing_job_ends_failed_with_a_readable_error(client, alice, spec, code, words):
    job_id = _store_unchecked(spec)
    Worker(get_settings(), device="cpu").run(max_jobs=1)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "FAILED", job
    assert job["error"]["code"] == code
    assert words in job["error"]["message"]
    assert "Traceback" not in job["error"]["message"]
    assert job["finished_at"] is not None and job["model_id"] is None
    last = events(job_id)[-1]
    assert last[1] == "state" and last[2] == {"state": "FAILED", "error": job["error"]}
    with get_write_sessionmaker()() as session:
        assert session.execute(select(TrainedModel)).first() is None


def test_a_model_that_cannot_be_recorded_leaves_no_folder(
    client, alice, tiny_spec, settings, monkeypatch
):
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    job_id = submit(client, alice, tiny_spec)
    monkeypatch.setattr(job_states, "succeed", refuse)
    Worker(get_settings(), device="cpu").run(max_jobs=1)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "FAILED" and job["model_id"] is None, job
    models = settings.artifact_dir / "models"
    assert not models.exists() or list(models.iterdir()) == [], "an orphaned model folder"


def test_the_loop_survives_a_failure_to_record_an_outcome(client, alice, tiny_spec, monkeypatch):
    # The first job fails, and writing FAILED fails too (the database is away for a moment):
    # that used to end the worker's loop, leaving the queue with nobody to run it.
    first = _store_unchecked({"kind": "train", "model": {"arch": "small_cnn"}})
    second = submit(client, alice, tiny_spec)
    real_finish = job_states.finish
    calls = []

    def flaky_finish(*args: Any, **kwargs: Any) -> bool:
        calls.append(args[1])
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(job_states, "finish", flaky_finish)
    Worker(get_settings(), device="cpu").run(max_jobs=2)
    assert client.get(f"/api/v1/jobs/{second}", headers=alice).json()["state"] == "SUCCEEDED"
    # The first keeps its lease until it goes stale; the sweep then requeues it.
    assert client.get(f"/api/v1/jobs/{first}", headers=alice).json()["state"] == "RUNNING"


# ------------------------------------------------------------------------------ cancel
def test_cancel_while_running(client, alice, running):
    job_id = submit(client, alice, long_train_spec())
    worker = running(max_jobs=1)
    wait_for("training to start", lambda: metric_epochs(events(job_id)))

    asked = time.monotonic()
    r = client.post(f"/api/v1/jobs/{job_id}:cancel", headers=alice)
    assert r.status_code == 202 and r.json()["state"] in ("CANCELLING", "CANCELLED")

    def cancelled() -> dict[str, Any] | None:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
        return job if job["state"] == "CANCELLED" else None

    job = wait_for("CANCELLED", cancelled, timeout=10)
    assert time.monotonic() - asked < 5, "cancel is honoured within a few seconds"
    worker.join(timeout=10)
    assert job["error"] is None and job["model_id"] is None and job["finished_at"]
    states = [d["state"] for _, t, d in events(job_id) if t == "state"]
    assert states == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
    assert len(metric_epochs(events(job_id))) < 200


# ---------------------------------------------------------------------------- shutdown
def test_shutdown_requeues_and_the_next_run_resumes(client, alice, settings, running):
    epochs = 8
    job_id = submit(client, alice, long_train_spec(epochs))
    checkpoint = settings.artifact_dir / "jobs" / job_id / "checkpoints" / "train.fit.pt"
    first = running(max_jobs=None)
    wait_for("the first epoch's checkpoint", checkpoint.exists)
    first.shutdown()
    first.join(timeout=10)

    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "QUEUED", job
    assert job["attempts"] == 0, "a clean shutdown does not use up an attempt"
    assert checkpoint.exists()
    saved_epoch = int(torch.load(checkpoint, weights_only=True)["epoch"])
    assert 1 <= saved_epoch < epochs
    before = events(job_id)
    assert before[-1][2] == {"state": "QUEUED", "reason": "worker shut down"}
    assert metric_epochs(before)[-1] < epochs

    Worker(get_settings(), device="cpu").run(max_jobs=1)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["state"] == "SUCCEEDED", job
    assert job["attempts"] == 1
    resumed = [e for e in events(job_id) if e[0] > before[-1][0]]
    running_events = [d for _, t, d in resumed if t == "state" and d["state"] == "RUNNING"]
    assert running_events and running_events[0]["attempt"] == 1
    # The second run goes on after the checkpointed epoch instead of starting again at 1.
    assert metric_epochs(resumed) == list(range(saved_epoch + 1, epochs + 1))
    assert not checkpoint.exists(), "the stage's fit checkpoint is dropped once it is done"


def test_a_resumed_distill_stage_reuses_the_teachers_kept_outputs(client, alice, settings, running):
    """The teacher's cached outputs are kept beside the job's checkpoints: a distill
    stage resumed after a shutdown reads them instead of running the teacher again."""
    job_id = submit(client, alice, tiny_pipeline_spec(distill_epochs=40))
    folder = settings.artifact_dir / "jobs" / job_id / "checkpoints"
    first = running(max_jobs=None)
    kept = wait_for(
        "the teacher's kept outputs and a distill checkpoint",
        lambda: list(folder.glob("*.fit.pt")) and list(folder.glob("*.teacher.safetensors")),
        timeout=60,
    )
    first.shutdown()
    first.join(timeout=10)
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["state"] == "QUEUED"
    before = events(job_id)

    Worker(get_settings(), device="cpu").run(max_jobs=1)
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["state"] == "SUCCEEDED"
    logs = [d["message"] for i, t, d in events(job_id) if t == "log" and i > before[-1][0]]
    assert any("were kept: reused" in m for m in logs), logs
    assert not any(m.startswith("caching the teacher's outputs") for m in logs), logs
    assert not kept[0].exists(), "dropped once the stage is done"


def test_shutdown_while_idle_stops_the_loop(env, running):
    worker = running(max_jobs=None)
    worker.shutdown()
    worker.join(timeout=5)


def test_worker_keeps_running_while_the_database_is_away(monkeypatch, tmp_path, caplog, running):
    monkeypatch.setenv(
        "STILLHOUSE_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    )
    monkeypatch.setenv("STILLHOUSE_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("STILLHOUSE_THREADS", "1")
    get_settings.cache_clear()
    reset_engines()
    try:
        worker = running(max_jobs=None)
        wait_for(
            "a failed claim",
            lambda: any("claiming a job failed" in r.getMessage() for r in caplog.records),
        )
        assert worker.thread.is_alive() and worker.error is None
        # It waits between tries, and a shutdown still ends the wait at once.
        worker.shutdown()
        worker.join(timeout=5)
    finally:
        get_settings.cache_clear()
        reset_engines()
