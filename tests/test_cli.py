"""The `stillhouse` command line: keys, migrations, and the commands the contract names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

BIN = Path(sys.executable).parent / "stillhouse"
CONTRACT_COMMANDS = ("serve", "api", "worker", "migrate", "keys", "submit", "status", "predict")


def stillhouse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def test_keys_create_prints_a_key_that_authenticates(env, client, tiny_spec):
    done = stillhouse("keys", "create", "--owner", "carol", env=env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n", "stdout holds the key and nothing else"
    assert key.startswith("sh_") and len(key) > 30

    headers = {"Authorization": f"Bearer {key}"}
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=headers)
    assert r.status_code == 201, r.text
    # The key is carol's: it sees carol's jobs, and a second key of hers sees the same.
    again = stillhouse("keys", "create", "--owner", "carol", env=env).stdout.strip()
    assert again != key
    listed = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {again}"}).json()
    assert [j["id"] for j in listed["jobs"]] == [r.json()["id"]]
    # Only a hash is stored: the key itself is nowhere in the database.
    from app.db import get_engine

    with get_engine().connect() as conn:
        stored = conn.exec_driver_sql("SELECT key_hash, prefix FROM api_keys").all()
    assert stored and all(key not in (h, p) and again not in (h, p) for h, p in stored)


def test_migrate_creates_the_tables_on_a_fresh_sqlite_file(tmp_path):
    db = tmp_path / "nested" / "fresh.db"
    url = f"sqlite:///{db}"
    done = stillhouse("migrate", env={"STILLHOUSE_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "jobs", "job_events", "models", "api_keys"} <= tables
    # Running it again is harmless.
    assert stillhouse("migrate", env={"STILLHOUSE_DATABASE_URL": url}).returncode == 0


def test_help_lists_every_command_of_the_contract():
    done = stillhouse("--help")
    assert done.returncode == 0, done.stderr
    for command in CONTRACT_COMMANDS:
        assert command in done.stdout, command
    for command, flags in (
        ("serve", ("--host", "--port")),
        ("api", ("--host", "--port")),
        ("worker", ("--device",)),
        ("submit", ("--wait",)),
    ):
        sub = stillhouse(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert all(flag in sub.stdout for flag in flags), (command, sub.stdout)
    keys = stillhouse("keys", "create", "--help")
    assert keys.returncode == 0 and "--owner" in keys.stdout


def test_client_commands_without_a_key_fail_clearly(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    done = stillhouse("submit", str(spec), env={"STILLHOUSE_API_URL": "http://127.0.0.1:9"})
    assert done.returncode == 1
    assert "STILLHOUSE_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_keys_create_refuses_clearly(tmp_path, sqlite_url):
    unmigrated = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    done = stillhouse("keys", "create", "--owner", "x", env={"STILLHOUSE_DATABASE_URL": unmigrated})
    assert done.returncode == 1 and done.stdout == ""
    assert "stillhouse migrate" in done.stderr and "Traceback" not in done.stderr

    done = stillhouse("keys", "create", "--owner", "", env={"STILLHOUSE_DATABASE_URL": sqlite_url})
    assert done.returncode == 2 and done.stdout == ""
    assert "--owner" in done.stderr and "Traceback" not in done.stderr


def test_following_events_gives_up_when_the_server_stays_gone(monkeypatch):
    """A refused connection is retried, a bounded number of times, then raised."""
    import httpx

    from app import client as client_module

    monkeypatch.setattr(client_module, "RECONNECT_ATTEMPTS", 3)
    monkeypatch.setattr(client_module, "RECONNECT_PAUSE_SECONDS", 0.01)
    # Port 9 (discard) has no listener here: every try is refused.
    api = client_module.Client("http://127.0.0.1:9", "key")
    tries = []
    real_stream = api.http.stream

    def counting_stream(*args, **kwargs):
        tries.append(args)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(api.http, "stream", counting_stream)
    with pytest.raises(httpx.ConnectError):
        list(api.events("job-1"))
    assert len(tries) == 3
