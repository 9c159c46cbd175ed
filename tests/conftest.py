"""Shared fixtures: every database test runs on SQLite and on the machine's Postgres.

Postgres: one throwaway database per test session (created here, dropped at the end) at
127.0.0.1:5432 (override with STILLHOUSE_TEST_PG_ADMIN_URL). In CI (CI=true) an
unreachable Postgres fails the suite; elsewhere its tests are skipped with the reason.
Between tests the tables are emptied, not re-created: migrating once per session keeps
the suite fast.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.config import get_settings
from app.db import reset_engines
from app.migrate import upgrade_head
from tests.helpers import tiny_train_spec

PG_ADMIN_URL = os.environ.get(
    "STILLHOUSE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = ("job_events", "job_inputs", "jobs", "models", "datasets", "checkpoints", "api_keys")


def _postgres_database() -> Iterator[str]:
    name = f"stillhouse_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        message = f"Postgres at {PG_ADMIN_URL} is not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url_iter = _postgres_database()
    url = next(url_iter)
    upgrade_head(url)
    yield url
    next(url_iter, None)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "stillhouse.db"
    url = f"sqlite:///{path}"
    upgrade_head(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty, migrated database; each test runs once per backend."""
    url = request.getfixturevalue(f"{request.param}_url")
    _empty(url)
    return url


def _empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the settings at the test database and a fresh artifact folder."""
    values = {
        "STILLHOUSE_DATABASE_URL": database_url,
        "STILLHOUSE_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "STILLHOUSE_DATA_ROOT": str(tmp_path / "data"),
        "STILLHOUSE_POLL_SECONDS": "0.05",
        "STILLHOUSE_CANCEL_POLL_SECONDS": "0.2",
        "STILLHOUSE_HEARTBEAT_SECONDS": "1",
        "STILLHOUSE_PROGRESS_INTERVAL_SECONDS": "0.2",
        "STILLHOUSE_THREADS": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    reset_engines()
    yield values
    get_settings.cache_clear()
    reset_engines()


@pytest.fixture
def settings(env: dict[str, str]):
    return get_settings()


@pytest.fixture
def client(env: dict[str, str]):
    from fastapi.testclient import TestClient

    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def make_key(owner: str) -> str:
    from app.db import get_write_sessionmaker
    from app.services.keys import create_key

    with get_write_sessionmaker()() as session:
        return create_key(session, owner=owner)


@pytest.fixture
def alice(env: dict[str, str]) -> dict[str, str]:
    """Auth headers of owner alice."""
    return {"Authorization": f"Bearer {make_key('alice')}"}


@pytest.fixture
def bob(env: dict[str, str]) -> dict[str, str]:
    """Auth headers of owner bob, who must never see alice's things."""
    return {"Authorization": f"Bearer {make_key('bob')}"}


@pytest.fixture
def tiny_spec() -> dict:
    """A training job small enough to finish in a second or two on one core (a fresh copy)."""
    return tiny_train_spec()


# Credentials the S3 test server accepts (any); real ones never reach the tests.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "stillhouse-test",
    "AWS_SECRET_ACCESS_KEY": "stillhouse-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_BUCKET = "stillhouse-test"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on a loopback port, with an empty
    bucket `S3_BUCKET`; its URL."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.helpers import free_port

    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"moto did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        httpx.put(f"{url}/{S3_BUCKET}", timeout=5).raise_for_status()
        yield url
    finally:
        server.terminate()
        server.wait(10)
