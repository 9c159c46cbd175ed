"""Health probes and Prometheus /metrics, on both backends, plus readiness without a database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app.config import get_settings
from app.core import job_states
from app.db import get_write_engine, reset_engines
from app.models import Job, JobState
from app.models.base import utcnow
from tests.helpers import free_port


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_live_and_ready_need_no_key(client):
    r = client.get("/v2/health/live")
    assert r.status_code == 200 and r.json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_operations_routes_need_no_key(client):
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path


@pytest.fixture
def unreachable_client(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[TestClient]:
    from app.main import app

    monkeypatch.setenv("STILLHOUSE_DATABASE_URL", request.param(tmp_path))
    get_settings.cache_clear()
    reset_engines()
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        get_settings.cache_clear()
        reset_engines()


@pytest.mark.parametrize(
    "unreachable_client",
    [
        # A directory that does not exist: SQLite cannot open the file.
        lambda tmp: f"sqlite:///{tmp}/missing/dir/stillhouse.db",
        # A file that opens but was never migrated.
        lambda tmp: f"sqlite:///{tmp}/empty.db",
        # A Postgres port nothing listens on.
        lambda tmp: f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/stillhouse",
    ],
    ids=["sqlite-no-dir", "sqlite-not-migrated", "postgres-closed-port"],
    indirect=True,
)
def test_ready_is_503_until_the_database_answers(unreachable_client):
    r = unreachable_client.get("/v2/health/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and "database" in body["error"]
    # Liveness does not depend on the database; /metrics still answers (without job figures).
    assert unreachable_client.get("/v2/health/live").status_code == 200
    r = unreachable_client.get("/metrics")
    assert r.status_code == 200 and "stillhouse_http_request_duration_seconds" in r.text


def test_job_metrics_match_the_jobs(client, alice, tiny_spec):
    engine = get_write_engine()

    def submit() -> str:
        r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
        assert r.status_code == 201
        return r.json()["id"]

    ids = [submit() for _ in range(6)]
    # Oldest first: two finish, one runs, one is cancelled, two stay queued.
    for worker_id, state in (("w1", JobState.SUCCEEDED), ("w2", JobState.FAILED)):
        job = job_states.claim_next(engine, worker_id)
        assert job is not None
        assert job_states.finish(engine, job.id, worker_id, state=state)
    assert job_states.claim_next(engine, "w3") is not None
    client.post(f"/api/v1/jobs/{ids[3]}:cancel", headers=alice)
    now = utcnow()
    with engine.begin() as conn:
        # Known run times (10 s and 100 s) and a queued job created 120 s ago.
        conn.execute(
            update(Job)
            .where(Job.id == ids[0])
            .values(started_at=now - timedelta(seconds=10), finished_at=now)
        )
        conn.execute(
            update(Job)
            .where(Job.id == ids[1])
            .values(started_at=now - timedelta(seconds=100), finished_at=now)
        )
        conn.execute(
            update(Job).where(Job.id == ids[4]).values(created_at=now - timedelta(seconds=120))
        )

    m = scrape(client)
    by_state = {
        state: m[("stillhouse_jobs", (("state", state),))] for state in [s.value for s in JobState]
    }
    assert by_state == {
        "QUEUED": 2,
        "RUNNING": 1,
        "CANCELLING": 0,
        "SUCCEEDED": 1,
        "FAILED": 1,
        "CANCELLED": 1,
    }
    assert m[("stillhouse_queue_depth", ())] == 2
    age = m[("stillhouse_oldest_queued_job_age_seconds", ())]
    assert 120 <= age < 180
    kind = (("kind", "train"),)
    # The cancelled job never started, so it has no run time.
    assert m[("stillhouse_job_duration_seconds_count", kind)] == 2
    assert m[("stillhouse_job_duration_seconds_sum", kind)] == pytest.approx(110, abs=0.01)
    assert m[("stillhouse_job_duration_seconds_bucket", (("kind", "train"), ("le", "15")))] == 1
    assert m[("stillhouse_job_duration_seconds_bucket", (("kind", "train"), ("le", "120")))] == 2


def test_empty_queue_metrics(client):
    m = scrape(client)
    assert m[("stillhouse_queue_depth", ())] == 0
    assert m[("stillhouse_oldest_queued_job_age_seconds", ())] == 0
    assert all(m[("stillhouse_jobs", (("state", s.value),))] == 0 for s in JobState)


def test_http_latency_is_recorded_by_route_template(client, alice):
    labels = (
        ("method", "GET"),
        ("route", "/api/v1/jobs/{job_id}"),
        ("status", "404"),
    )
    before = scrape(client).get(("stillhouse_http_request_duration_seconds_count", labels), 0)
    for i in range(3):
        assert client.get(f"/api/v1/jobs/id-{i}", headers=alice).status_code == 404
    after = scrape(client)
    assert after[("stillhouse_http_request_duration_seconds_count", labels)] == before + 3
    # Ids are not labels: one series for the route, however many ids were asked for.
    assert not any("id-1" in str(key) for key in after)
