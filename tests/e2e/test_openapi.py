"""The OpenAPI document tells the truth: schemathesis, with every check, against the real
`stillhouse api` process.

Every check runs (`--checks all`): no server error, no undocumented status code or content
type, responses that match their schemas, `Allow` on a 405 listing exactly the path's
methods, schema-valid requests accepted (except where tests/e2e/schemathesis.toml says
why a 422 is right), and the rest. No worker runs: the jobs schemathesis submits stay
queued. One backend (SQLite): the document does not depend on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Examples per operation in the fuzzing phase; the coverage phase adds its own cases
# (about 5,000 in all, under a minute here). A fixed seed: a failure can be replayed.
MAX_EXAMPLES = 10
SEED = 1


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, API key) of a real API process on an empty SQLite database."""
    root = tmp_path_factory.mktemp("openapi")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env.update(
        STILLHOUSE_DATABASE_URL=f"sqlite:///{root / 'db.sqlite'}",
        STILLHOUSE_ARTIFACT_DIR=str(root / "artifacts"),
        STILLHOUSE_LOG_LEVEL="WARNING",
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "stillhouse"), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    cli("migrate")
    key = cli("keys", "create", "--owner", "schemathesis")
    port = free_port()
    log = root / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "stillhouse"), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("the API to answer", ready, timeout=90, on_fail=log.read_text())
        yield url, key
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_schemathesis_check_passes_against_the_running_api(api: tuple[str, str]):
    url, key = api
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and "failures" not in done.stdout.splitlines()[-1]


def test_the_document_declares_bearer_auth_and_problem_bodies(api: tuple[str, str]):
    url, _ = api
    document = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `stillhouse keys create --owner NAME` prints one.",
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            if path.startswith(("/api/v1", "/v2/models")) or path == "/v2":
                assert operation.get("security") == [{"bearer": []}], where
                assert "401" in operation["responses"], where
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    media = (
                        "application/json"
                        if path.startswith("/v2")
                        else ("application/problem+json")
                    )
                    assert list(answer["content"]) == [media], (where, status)
