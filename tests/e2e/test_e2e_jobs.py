"""End to end: the real `stillhouse api` and `stillhouse worker` processes over HTTP, both backends.

The tests run in file order per backend and share the stack's workers where that is safe:
each asks for the workers it needs (the stack starts two with the API), and the ones that
kill workers come last, so that few workers have to be started (each start costs seconds).
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.e2e.conftest import Event, Stack
from tests.helpers import (
    free_port,
    long_train_spec,
    tiny_pipeline_spec,
    tiny_train_spec,
    wait_for,
)

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# A job that finishes in well under a second of training.
TINY_SPEC = tiny_train_spec(classes=[0, 1], samples_per_class=20, epochs=1, batch_size=16)


def states(events: list[Event]) -> list[str]:
    return [e.data["state"] for e in events if e.type == "state"]


def metric_epochs(events: list[Event], stage: str = "train") -> list[int]:
    return [e.data["epoch"] for e in events if e.type == "metric" and e.data["stage"] == stage]


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[-2])


def test_two_workers_race_for_twenty_jobs(stack: Stack):
    workers = stack.workers(2, exactly=True)
    jobs = [stack.submit({**TINY_SPEC, "name": f"race-{i}"}) for i in range(20)]

    def all_finished() -> list[dict] | None:
        listed = stack.client().get("/api/v1/jobs", params={"page_size": 50}).json()["jobs"]
        finished = [j for j in listed if j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")]
        return listed if len(finished) == len(jobs) else None

    listed = wait_for("twenty jobs to finish", all_finished, timeout=180, on_fail=stack.logs())
    assert {j["state"] for j in listed} == {"SUCCEEDED"}
    assert all(j["attempts"] == 1 for j in listed)
    ran_on: dict[int, int] = {}
    for job in jobs:
        running = [e.data for e in stack.events(job["id"]) if e.data.get("state") == "RUNNING"]
        assert len(running) == 1 and running[0]["attempt"] == 1, (job["id"], running)
        pid = pid_of(running[0]["worker"])
        ran_on[pid] = ran_on.get(pid, 0) + 1
    assert set(ran_on) <= {w.pid for w in workers}
    # Both were idle and polling: each takes some of twenty jobs.
    assert len(ran_on) == 2, ran_on


def test_submit_and_follow_the_event_stream(stack: Stack):
    stack.workers(1)
    job = stack.submit(TINY_SPEC)
    # Read live: the stream starts before the job runs and ends after its final state.
    events = stack.events(job["id"])
    ids = [e.id for e in events]
    assert all(a < b for a, b in itertools.pairwise(ids)), ids
    assert states(events) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert events[-1].type == "state" and events[-1].data["model_id"]
    assert {"progress", "metric"} <= {e.type for e in events}
    assert stack.job(job["id"])["state"] == "SUCCEEDED"

    middle = ids[len(ids) // 2]
    resumed = stack.events(job["id"], last_event_id=middle)
    assert resumed == [e for e in events if e.id > middle]
    assert stack.events(job["id"], last_event_id=ids[-1]) == []


def test_cli_submit_wait(stack: Stack):
    stack.workers(1)
    env = {"STILLHOUSE_API_URL": str(stack.client().base_url), "STILLHOUSE_API_KEY": stack.key}
    done = stack.run_cli("submit", str(EXAMPLES / "train_digits.json"), "--wait", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    first, _, rest = done.stdout.partition("\n")
    queued = json.loads(first)
    final = json.loads(rest)
    assert final["id"] == queued["id"] and final["state"] == "SUCCEEDED"
    assert final["model_id"] and final["metrics"]["accuracy"] > 0.5

    status = stack.run_cli("status", queued["id"], "--json", **env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "SUCCEEDED"

    bad = stack.run_cli(
        "submit", str(EXAMPLES / "train_digits.json"), **{**env, "STILLHOUSE_API_KEY": "nope"}
    )
    assert bad.returncode == 1 and "401" in bad.stderr


PIPELINE_SPEC = tiny_pipeline_spec(name="e2e-pipeline", baseline=True, finetune_batch_size=10)


def test_pipeline_end_to_end_over_http(stack: Stack):
    stack.workers(1)
    job = stack.submit(PIPELINE_SPEC)
    events = stack.events(job["id"])
    assert states(events) == ["QUEUED", "RUNNING", "SUCCEEDED"], stack.logs()
    started = [e.data["stage"] for e in events if e.type == "progress" and e.data.get("epoch") == 0]
    # The default strategy: the teacher (digits 0-4) is fine-tuned on 5-9 first, then
    # distilled into the student.
    assert started == ["teacher", "teacher_finetune", "distill", "finetune", "baseline"]
    done = stack.job(job["id"])
    report = done["report"]
    assert report["strategy"] == "finetune_then_distill"
    assert report["teacher"]["fine_tuned_on_target"] is True
    assert report["compression"] > 10 and report["student"]["accuracy"] is not None
    assert set(report["baseline"]) >= {"accuracy", "params", "size_bytes", "latency_ms"}

    http = stack.client()
    history = http.get(f"/api/v1/jobs/{job['id']}/metrics").json()
    assert set(history["stages"]) == {
        "teacher",
        "distill",
        "finetune",
        "teacher_finetune",
        "baseline",
    }
    curves = http.get(f"/api/v1/jobs/{job['id']}/plots/learning_curves.png")
    assert curves.status_code == 200 and curves.headers["content-type"] == "image/png"
    assert http.get(f"/api/v1/jobs/{job['id']}/plots/pareto.png").status_code == 404

    # The finished student answers predictions, labelled with the target's classes.
    model = http.get(f"/api/v1/models/{done['model_id']}").json()
    assert model["classes"] == ["5", "6", "7", "8", "9"]
    inputs = torch.rand(2, 8, 8).tolist()
    predicted = http.post(f"/api/v1/models/{done['model_id']}/predict", json={"inputs": inputs})
    assert predicted.status_code == 200, predicted.text
    assert [p["label"] in model["classes"] for p in predicted.json()["predictions"]] == [True, True]


# ----------------------------------------------- `stillhouse api --workers 2` (issue 12)
# Two serving processes on one port, one database and one artifact store: both serve the
# same models; a model deleted through another API process stops being served by every
# one of them at once; SIGTERM stops them all.
SERVED_TWICE_SPEC = tiny_train_spec(
    name="served-twice", classes=[0, 1], samples_per_class=20, epochs=1
)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def fresh_post(url: str, key: str, body: dict) -> httpx.Response:
    # A new connection per request, so that the kernel spreads them over the processes.
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        return client.post(url, json=body)


def test_two_serving_processes_share_models_and_deletes(stack: Stack):
    stack.workers(1)
    job = stack.submit(SERVED_TWICE_SPEC)
    done = stack.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=120)
    assert done["state"] == "SUCCEEDED", stack.logs()
    model_id = done["model_id"]

    port = free_port()
    api = stack.spawn("api-x2", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2")
    stack.extra.append(api)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert api.alive(), api.tail()
        try:
            up = httpx.get(f"{base}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False
        return up and len(children_of(api.pid)) >= 2

    wait_for("two serving processes", ready, timeout=90, on_fail=api.tail())
    # uvicorn's supervisor plus its two workers (and maybe a resource tracker).
    served_by = children_of(api.pid)
    assert len(served_by) >= 2, served_by
    assert "2 serving process(es)" in api.output()

    url = f"{base}/api/v1/models/{model_id}/predict"
    body = {"inputs": [[[0.5] * 8] * 8]}
    # Enough fresh connections that both processes serve (and remember the model).
    for _ in range(30):
        r = fresh_post(url, stack.key, body)
        assert r.status_code == 200, r.text

    # Deleted through the stack's own API process: every one of these stops at once.
    assert stack.client().delete(f"/api/v1/models/{model_id}").status_code == 204
    for _ in range(30):
        r = fresh_post(url, stack.key, body)
        assert r.status_code == 404, r.text

    api.stop()
    assert api.popen.returncode is not None
    wait_for("the serving processes to exit", lambda: not any(map(alive, served_by)), 20)


def test_api_workers_flag_is_checked(stack: Stack):
    done = stack.run_cli("api", "--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr
    started = time.monotonic()
    done = stack.run_cli("api", "--workers", "many")
    assert done.returncode == 2 and "not a whole number" in done.stderr
    assert time.monotonic() - started < 30


# Thirty distill epochs of under a tenth of a second each: time to kill a worker mid-stage.
RESUME_SPEC = tiny_pipeline_spec(
    name="resume-me", distill_epochs=30, finetune_samples_per_class=5, finetune_epochs=2
)


def test_kill_9_then_another_worker_resumes_from_the_checkpoint(stack: Stack):
    stack.workers(1)
    epochs = RESUME_SPEC["distill"]["epochs"]
    job = stack.submit(RESUME_SPEC)
    checkpoint = stack.artifact_dir / "jobs" / job["id"] / "checkpoints" / "distill.fit.pt"
    running = stack.wait_state(job["id"], "RUNNING")
    assert running["attempts"] == 1

    # Let it finish the teacher and checkpoint a few distill epochs, then kill it hard.
    def three_distill_epochs() -> bool:
        distilled = metric_epochs(stack.events_so_far(job["id"]), "distill")
        return len(distilled) >= 3 and checkpoint.exists()

    wait_for("three distill epochs", three_distill_epochs, timeout=120, on_fail=stack.logs())
    (claim,) = [e.data for e in stack.events_so_far(job["id"]) if e.data.get("state") == "RUNNING"]
    victim = stack.worker_by_id(claim["worker"])
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)
    before = metric_epochs(stack.events_so_far(job["id"]), "distill")
    assert len(before) >= 3
    saved_epoch = int(torch.load(checkpoint, weights_only=True)["epoch"])
    assert 1 <= saved_epoch < epochs, "killed mid-stage"
    assert stack.job(job["id"])["state"] == "RUNNING", "nobody knows yet that its worker is gone"

    # A worker that considers a heartbeat 3 s old stale sweeps the job back to the queue.
    sweeper = stack.start_worker(pool=False, STILLHOUSE_STALE_AFTER_SECONDS="3")
    stack.wait_ready(sweeper)
    done = stack.wait_state(job["id"], "SUCCEEDED", "FAILED", "CANCELLED", timeout=90)
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 2

    events = stack.events(job["id"])
    assert states(events) == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    requeued = [e for e in events if e.type == "state"][2]
    assert requeued.data["reason"] == "worker lost"
    second = [e for e in events if e.data.get("state") == "RUNNING"][1]
    assert second.data["attempt"] == 2 and pid_of(second.data["worker"]) != victim.pid
    resumed = [e for e in events if e.id > second.id]
    # The finished teacher is reused, and distill goes on after its checkpointed epoch.
    logs = [e.data["message"] for e in resumed if e.type == "log"]
    assert any("stage teacher finished in an earlier attempt" in m for m in logs), logs
    assert metric_epochs(resumed, "distill") == list(range(saved_epoch + 1, epochs + 1))
    distilled = metric_epochs(events, "distill")
    assert distilled.count(1) == 1, "the distill stage restarted from scratch"
    assert sorted(set(distilled)) == list(range(1, epochs + 1))
    # At most the epoch in flight at the kill (metric written, checkpoint not yet) repeats.
    assert len(distilled) - len(set(distilled)) <= 1


def test_cancel_a_running_job_then_the_worker_takes_the_next(stack: Stack):
    (worker,) = stack.workers(1, exactly=True)
    job = stack.submit(long_train_spec(200, name="long-200"))
    stack.wait_state(job["id"], "RUNNING")
    wait_for(
        "the first epoch",
        lambda: stack.job(job["id"])["metrics"],
        timeout=60,
        on_fail=stack.logs(),
    )
    asked = time.monotonic()
    r = stack.client().post(f"/api/v1/jobs/{job['id']}:cancel")
    # The worker may finish the cancel between the route's commit and its re-read, so
    # the reply can already say CANCELLED; the events below prove CANCELLING came first.
    assert r.status_code == 202 and r.json()["state"] in ("CANCELLING", "CANCELLED")
    cancelled = stack.wait_state(job["id"], "CANCELLED", "FAILED", "SUCCEEDED", timeout=10)
    assert cancelled["state"] == "CANCELLED"
    assert time.monotonic() - asked < 5, "cancel takes effect within a few seconds"
    assert states(stack.events(job["id"])) == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]

    following = stack.submit(TINY_SPEC)
    done = stack.wait_state(following["id"], "SUCCEEDED", "FAILED", "CANCELLED")
    assert done["state"] == "SUCCEEDED", done
    running = [e for e in stack.events(following["id"]) if e.data.get("state") == "RUNNING"]
    assert [pid_of(e.data["worker"]) for e in running] == [worker.pid]
    assert worker.alive()


def test_sigterm_gives_the_job_back(stack: Stack):
    (worker,) = stack.workers(1, exactly=True)
    job = stack.submit(long_train_spec(200, name="long-200"))
    stack.wait_state(job["id"], "RUNNING")
    wait_for("the first epoch", lambda: stack.job(job["id"])["metrics"], 60, stack.logs())
    sent = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    code = worker.popen.wait(10)
    assert code == 0, worker.tail()
    assert time.monotonic() - sent < 5, "a worker stops within a few seconds of SIGTERM"

    after = stack.job(job["id"])
    assert after["state"] == "QUEUED" and after["attempts"] == 0, after
    last = [e for e in stack.events_so_far(job["id"]) if e.type == "state"][-1]
    assert last.data == {"state": "QUEUED", "reason": "worker shut down"}
