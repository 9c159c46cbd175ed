"""GET /api/v1/workers: a real worker's row (worker/presence.py) as the API shows it."""

from __future__ import annotations

from datetime import timedelta

from app.config import get_settings
from app.db import get_write_sessionmaker
from app.models import WorkerRecord
from app.models.base import utcnow
from worker.main import Worker


def test_a_worker_is_listed_with_what_it_can_run_until_it_stops(client, alice, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_WORKER_LABELS", "eu-west, cpu-big,eu-west,")
    get_settings.cache_clear()
    worker = Worker(get_settings(), device="cpu")
    worker.presence.start()
    try:
        listed = client.get("/api/v1/workers", headers=alice)
        assert listed.status_code == 200, listed.text
        (shown,) = listed.json()["workers"]
        assert shown["id"] == worker.worker_id
        assert (shown["device"], shown["gpus"], shown["gpu_memory_bytes"]) == ("cpu", 0, 0)
        assert shown["labels"] == ["cpu-big", "eu-west"] and shown["job_id"] is None
        worker.presence.set_job("6671dfa0-05bd-48f5-8a67-bd25406fc72b")
        (shown,) = client.get("/api/v1/workers", headers=alice).json()["workers"]
        assert shown["job_id"] == "6671dfa0-05bd-48f5-8a67-bd25406fc72b"
    finally:
        worker.presence.stop()
    assert client.get("/api/v1/workers", headers=alice).json() == {"workers": []}


def test_a_worker_that_stopped_beating_is_not_listed(client, alice):
    old = utcnow() - timedelta(seconds=get_settings().stale_after_seconds + 5)
    with get_write_sessionmaker()() as session:
        session.add(
            WorkerRecord(
                id="gone:1:abc",
                hostname="gone",
                pid=1,
                device="cuda",
                gpus=2,
                gpu_memory_bytes=1,
                labels=[],
                started_at=old,
                last_seen=old,
            )
        )
        session.commit()
    assert client.get("/api/v1/workers", headers=alice).json() == {"workers": []}


def test_workers_need_a_key(client):
    r = client.get("/api/v1/workers")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem")
