"""A job trained by 2 data-parallel processes (gloo), its worker killed with SIGKILL: the
ranks die with it, another worker resumes from rank 0's checkpoint, and a cancel stops
every rank. Real processes throughout; Postgres only (the ranks never touch the
database, and the other e2e modules cover both backends)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import Stack
from tests.e2e.test_e2e_jobs import alive, children_of, metric_epochs, pid_of, states
from tests.helpers import long_train_spec, wait_for

pytestmark = pytest.mark.parametrize("e2e_stack", ["postgres"], indirect=True)


def ranks_of(pid: int) -> list[int]:
    """The worker's rank processes (multiprocessing's resource tracker is a child too)."""
    ranks = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            ranks.append(child)
    return ranks


def test_kill_9_takes_the_ranks_along_and_another_worker_resumes_then_cancels(stack: Stack):
    (worker,) = stack.workers(1, exactly=True)
    spec = long_train_spec(200, name="ddp-200")
    spec["resources"] = {"processes": 2}
    job = stack.submit(spec)
    checkpoint = stack.artifact_dir / "jobs" / job["id"] / "checkpoints" / "train.fit.pt"

    def two_epochs_saved() -> bool:
        return len(metric_epochs(stack.events_so_far(job["id"]))) >= 2 and checkpoint.exists()

    wait_for("two epochs of 2-process training", two_epochs_saved, 120, stack.logs())
    ranks = ranks_of(worker.pid)
    assert len(ranks) == 2, (ranks, worker.tail())

    worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait(10)
    wait_for("the ranks to die with their worker", lambda: not any(map(alive, ranks)), 10)
    saved_epoch = int(torch.load(checkpoint, weights_only=True)["epoch"])
    assert saved_epoch >= 1

    # A worker that finds the heartbeat stale takes the job back and resumes it.
    sweeper = stack.start_worker(pool=False, STILLHOUSE_STALE_AFTER_SECONDS="3")
    stack.wait_ready(sweeper)

    def resumed_epochs() -> list[int]:
        events = stack.events_so_far(job["id"])
        second = [e for e in events if e.data.get("state") == "RUNNING"][1:]
        return metric_epochs([e for e in events if second and e.id > second[0].id])

    wait_for("an epoch after the resume", lambda: resumed_epochs(), 120, stack.logs())
    assert resumed_epochs()[0] == saved_epoch + 1, "the stage restarted instead of resuming"
    running = [e for e in stack.events_so_far(job["id"]) if e.data.get("state") == "RUNNING"]
    assert pid_of(running[1].data["worker"]) == sweeper.pid
    new_ranks = ranks_of(sweeper.pid)
    assert len(new_ranks) == 2

    asked = time.monotonic()
    r = stack.client().post(f"/api/v1/jobs/{job['id']}:cancel")
    assert r.status_code == 202
    done = stack.wait_state(job["id"], "CANCELLED", "FAILED", "SUCCEEDED", timeout=15)
    assert done["state"] == "CANCELLED", done
    assert time.monotonic() - asked < 8, "every rank stops within a few steps"
    assert states(stack.events(job["id"]))[-2:] == ["CANCELLING", "CANCELLED"]
    wait_for("the new ranks to end", lambda: not any(map(alive, new_ranks)), 10)
    assert sweeper.alive()
