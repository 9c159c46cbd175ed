"""A job whose worker process is killed resumes from its last checkpoint, elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from app.config import get_settings
from tests.worker.jobrun import events, job_row, run_one, submit

SPEC = {
    "kind": "pipeline",
    "name": "resume-me",
    "teacher": {
        "source": "train",
        "arch": "small_cnn",
        "train": {"dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]}, "epochs": 2},
    },
    "student": {"arch": "small_cnn", "width": 0.25},
    "distill": {"dataset": {"name": "digits", "labels": False}, "epochs": 30},
    "finetune": {
        "dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 5},
        "epochs": 2,
    },
}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def distill_epochs(job_id: str) -> list[int]:
    return [e["epoch"] for e in events(job_id, "metric") if e["stage"] == "distill"]


def test_killed_worker_resumes_from_the_checkpoint(env, monkeypatch: pytest.MonkeyPatch):
    job_id = submit(SPEC)
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--device", "cpu"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Let it finish the teacher and checkpoint a few distill epochs, then kill it hard.
        wait_for(lambda: len(distill_epochs(job_id)) >= 3, 120, "three distill epochs")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    before = distill_epochs(job_id)
    assert job_row(job_id).state == "RUNNING"  # nobody knows yet that its worker is gone

    # A second worker sweeps the stale job back to the queue and resumes it.
    monkeypatch.setenv("STILLHOUSE_STALE_AFTER_SECONDS", "1")
    get_settings.cache_clear()
    time.sleep(1.5)
    run_one()

    job = job_row(job_id)
    assert job.state == "SUCCEEDED", job.error
    assert job.attempts == 2
    epochs = distill_epochs(job_id)
    assert epochs.count(1) == 1, "the distill stage restarted from scratch"
    assert sorted(set(epochs)) == list(range(1, 31))
    # At most the epoch in flight at the kill (metric written, checkpoint not yet) repeats.
    assert len(epochs) - len(set(epochs)) <= 1
    assert len(before) >= 3
    states = [e["state"] for e in events(job_id, "state")]
    assert states == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    logs = [e["message"] for e in events(job_id, "log")]
    assert any("stage teacher finished in an earlier attempt" in m for m in logs)
