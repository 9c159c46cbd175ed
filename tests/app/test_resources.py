"""A job's `resources` decide which workers claim it, and a job no live worker can run
says why it waits (`waiting_reason`). Real database, real claims."""

from __future__ import annotations

import pytest

from app.config import get_settings
from app.core import job_states
from app.db import get_write_engine
from worker.main import Worker


def submit(client, headers, spec: dict, **resources) -> dict:
    body = {**spec, "resources": resources} if resources else spec
    r = client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_each_worker_claims_only_what_it_can_run(client, alice, tiny_spec):
    plain = submit(client, alice, tiny_spec)
    labelled = submit(client, alice, tiny_spec, labels=["a100", "eu"])
    gpu = submit(client, alice, tiny_spec, gpus=1)
    engine = get_write_engine()

    def claim(**capabilities):
        job = job_states.claim_next(engine, "w", **capabilities)
        return None if job is None else job.id

    # A worker with one label short of the job's, and no GPU: only the plain job.
    assert claim(labels=["a100"]) == plain["id"]
    assert claim(labels=["a100"]) is None
    # The labels, in any order, among more: the labelled job; never the GPU one.
    assert claim(labels=["x", "eu", "a100"]) == labelled["id"]
    assert claim(labels=["x", "eu", "a100"]) is None
    assert claim(gpus=2) == gpu["id"]
    assert claim(gpus=2) is None


def test_the_oldest_claimable_job_goes_first(client, alice, tiny_spec):
    first = submit(client, alice, tiny_spec, labels=["eu"])
    second = submit(client, alice, tiny_spec)
    engine = get_write_engine()
    assert job_states.claim_next(engine, "w", labels=["eu"]).id == first["id"]
    assert job_states.claim_next(engine, "w", labels=["eu"]).id == second["id"]


def test_a_job_no_live_worker_can_run_says_so(client, alice, tiny_spec, monkeypatch):
    waiting = submit(client, alice, tiny_spec, labels=["tpu"])
    assert "no live worker" in waiting["waiting_reason"]
    monkeypatch.setenv("STILLHOUSE_WORKER_LABELS", "eu")
    get_settings.cache_clear()
    worker = Worker(get_settings(), device="cpu")
    worker.presence.start()
    try:
        shown = client.get(f"/api/v1/jobs/{waiting['id']}", headers=alice).json()
        assert shown["waiting_reason"].startswith("no live worker has labels tpu")
        runnable = submit(client, alice, tiny_spec, labels=["eu"])
        assert runnable["waiting_reason"] is None
        listed = client.get("/api/v1/jobs", headers=alice).json()["jobs"]
        reasons = {j["id"]: j["waiting_reason"] for j in listed}
        assert reasons[runnable["id"]] is None and reasons[waiting["id"]]
    finally:
        worker.presence.stop()


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"gpus": -1}, "resources.gpus"),
        ({"gpus": 65}, "resources.gpus"),
        ({"labels": ["has space"]}, "resources.labels"),
        ({"labels": [""]}, "resources.labels"),
        ({"cpus": 4}, "resources.cpus"),
        ({"processes": 0}, "resources.processes"),
        ({"processes": 65}, "resources.processes"),
        ({"gpus": 2, "processes": 3}, "resources.processes"),
    ],
)
def test_bad_resources_are_refused_by_name(client, alice, tiny_spec, resources, field):
    r = client.post("/api/v1/jobs", json={**tiny_spec, "resources": resources}, headers=alice)
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields


def test_stillhouse_status_shows_why_a_job_waits(client, alice, tiny_spec):
    from app.cli_client import status_text

    waiting = submit(client, alice, tiny_spec, gpus=8)
    text = status_text(waiting)
    assert "waiting" in text and "no live worker" in text
