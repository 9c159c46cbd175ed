"""Idle workers wake when a job is queued (Postgres LISTEN/NOTIFY, worker/wakeup.py);
on SQLite, and always beside it, they poll."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from app.config import get_settings
from worker.main import Worker
from worker.wakeup import Wakeup, libpq_url


def test_only_postgres_urls_are_listened_on():
    assert libpq_url("sqlite:///./stillhouse.db") is None
    assert (
        libpq_url("postgresql+psycopg://user:pw@db:5432/stillhouse")
        == "postgresql://user:pw@db:5432/stillhouse"
    )


def test_a_submitted_job_wakes_a_listener_at_once(client, alice, tiny_spec, settings):
    stopping = threading.Event()
    wakeup = Wakeup(settings, stopping)
    try:
        if settings.is_sqlite:
            assert wakeup.mode == "polling" and not wakeup.listening.wait(0.5)
            return
        assert wakeup.mode == "notify + polling"
        assert wakeup.listening.wait(10), "the listener did not connect"
        wakeup.wait(0.0)  # the "look now" of a fresh connection
        started = time.monotonic()
        assert client.post("/api/v1/jobs", json=tiny_spec, headers=alice).status_code == 201
        assert wakeup.event.wait(5), "no notification for the queued job"
        assert time.monotonic() - started < 5
        # A rolled-back or other change sends nothing: the next wait times out.
        wakeup.wait(0.0)
        assert not wakeup.event.wait(0.3)
    finally:
        stopping.set()


# Postgres only: SQLite has no notifications, its workers poll (tested above).
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_polling_slowly_still_starts_a_job_at_once_on_postgres(
    client, alice, tiny_spec, monkeypatch
):
    # A poll every 60 s: only a notification can start the job within the test's time.
    monkeypatch.setenv("STILLHOUSE_POLL_SECONDS", "60")
    get_settings.cache_clear()
    worker = Worker(get_settings(), device="cpu")
    assert worker.wakeup.listening.wait(10)
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": 1}, daemon=True)
    runner.start()
    try:
        time.sleep(0.5)  # the worker has found the queue empty and waits
        r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
        assert r.status_code == 201
        runner.join(60)
        assert not runner.is_alive(), "the job did not run: the worker slept through it"
        job = client.get(f"/api/v1/jobs/{r.json()['id']}", headers=alice).json()
        assert job["state"] == "SUCCEEDED", job
        created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
        began = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
        assert (began - created).total_seconds() < 5
    finally:
        worker.stopping.set()
        worker.wakeup.wake()
