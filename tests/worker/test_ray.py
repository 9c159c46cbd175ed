"""Data-parallel stages on a Ray cluster (worker/ray_train.py), against a real local Ray
instance that this module starts with 2 CPUs: a job asking for more processes than the
worker runs itself trains through Ray Train's TorchTrainer, reports its progress into
the job's events, and a cancel stops its ranks and frees the cluster."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings, get_settings
from tests.helpers import events, free_port, long_train_spec, tiny_train_spec, wait_for
from tests.worker import jobrun
from tests.worker.test_worker import Running, metric_epochs, submit
from worker.ray_train import wants_ray

# Ray's sockets live under its temp dir, whose path must stay short (AF_UNIX).
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray head on a loopback port with 2 CPUs, no dashboard; its address."""
    port = free_port()
    temp = Path(f"/tmp/sh-ray-{port}")
    log = open(temp.with_suffix(".log"), "wb")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--object-store-memory=200000000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    try:

        def up() -> bool:
            if head.poll() is not None:
                raise AssertionError(temp.with_suffix(".log").read_text())
            status = subprocess.run(
                [RAY, "status", f"--address={address}"], capture_output=True, timeout=60
            )
            return status.returncode == 0

        wait_for("the Ray head", up, timeout=90)
        yield address
    finally:
        import ray

        ray.shutdown()
        # `ray start --block` takes Ctrl-C as the signal to stop the head's processes.
        head.send_signal(signal.SIGINT)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def on_ray(env, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The worker's settings point at the cluster and run 1 process themselves at most."""
    monkeypatch.setenv("STILLHOUSE_RAY_ADDRESS", ray_address)
    monkeypatch.setenv("STILLHOUSE_LOCAL_PROCESSES", "1")
    get_settings.cache_clear()
    return ray_address


def free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def test_which_stages_go_to_ray():
    ray = Settings(ray_address="127.0.0.1:1", local_processes=2)
    assert not wants_ray(ray, 2, cuda=False) and wants_ray(ray, 3, cuda=False)
    assert not wants_ray(Settings(local_processes=1), 8, cuda=False), "no cluster: here"
    assert not wants_ray(Settings(ray_address="x:1", local_processes=1), 1, cuda=False)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_cluster_that_does_not_answer_fails_the_job_in_seconds(env, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("STILLHOUSE_RAY_ADDRESS", address)
    monkeypatch.setenv("STILLHOUSE_LOCAL_PROCESSES", "1")
    get_settings.cache_clear()
    started = time.monotonic()
    job = jobrun.run({**tiny_train_spec(epochs=1), "resources": {"processes": 2}})
    assert job.state == "FAILED" and job.error is not None
    assert job.error["code"] == "unavailable" and address in job.error["message"], job.error
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stage_wider_than_the_worker_trains_on_the_ray_cluster(on_ray: str):
    spec = {**tiny_train_spec(epochs=3), "resources": {"processes": 2}}
    job = jobrun.run(spec)
    assert job.state == "SUCCEEDED", job.error
    logs = [e["message"] for e in jobrun.events(job.id, "log")]
    assert any(f"training on the Ray cluster at {on_ray}" in m for m in logs), logs
    # Rank 0's progress and every epoch's metrics came back into the job's events.
    metrics = [e for e in jobrun.events(job.id, "metric") if e["stage"] == "train"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_accuracy"] > 0.5
    assert jobrun.events(job.id, "progress")
    wait_for("Ray's CPUs free again", lambda: free_cpus() == 2.0, timeout=30)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_cancel_stops_the_ranks_on_the_ray_cluster(on_ray: str, client, alice):
    job_id = submit(client, alice, {**long_train_spec(300), "resources": {"processes": 2}})
    worker = Running(max_jobs=1)
    try:
        wait_for("an epoch trained on Ray", lambda: metric_epochs(events(job_id)), timeout=120)
        asked = time.monotonic()
        r = client.post(f"/api/v1/jobs/{job_id}:cancel", headers=alice)
        assert r.status_code == 202, r.text

        def cancelled() -> bool:
            state = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["state"]
            return state == "CANCELLED"

        wait_for("CANCELLED", cancelled, timeout=30)
        assert time.monotonic() - asked < 15, "the ranks stop within a poll and a step"
        worker.join(timeout=30)
        assert len(metric_epochs(events(job_id))) < 300
        wait_for("Ray's CPUs free again", lambda: free_cpus() == 2.0, timeout=30)
    finally:
        worker.shutdown()
