"""The real processes: `stillhouse migrate`, `keys create`, `api` and `worker`, talked to over HTTP.

One API process per backend and module (starting one costs seconds of imports), with
worker processes around it. Workers that a test asks for stay up for the next test unless
that test killed them; whatever a test started with other settings is stopped after it.
Between tests the job tables are emptied (the key stays), as `database_url` does for
in-process tests. Every process is stopped at teardown, however the tests ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from app.models import JobEvent
from tests.conftest import _empty
from tests.helpers import free_port, wait_for

BIN = Path(sys.executable).parent
# Process start-up imports torch: seconds, more on a busy 2-core machine.
START_TIMEOUT = 90.0
WORKER_READY = re.compile(r"worker (\S+) on \S+ with \d+ threads, polling every")

# Settings every process gets: fast polling so that tests wait little.
BASE_ENV = {
    "STILLHOUSE_POLL_SECONDS": "0.1",
    "STILLHOUSE_HEARTBEAT_SECONDS": "1",
    "STILLHOUSE_CANCEL_POLL_SECONDS": "0.2",
    "STILLHOUSE_PROGRESS_INTERVAL_SECONDS": "0.5",
    "STILLHOUSE_THREADS": "1",
    # One serving process, so that killing the API's process kills the API; tests of
    # `--workers` ask for more.
    "STILLHOUSE_API_WORKERS": "1",
    "STILLHOUSE_DEVICE": "cpu",
    "STILLHOUSE_LOG_LEVEL": "INFO",
}


@dataclass
class Proc:
    """A spawned `stillhouse` process with its output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    worker_id: str | None = None
    terminated: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (pid {self.pid}) ---\n" + "\n".join(
            self.output().splitlines()[-lines:]
        )

    def stop(self, timeout: float = 15.0, *, wait: bool = True) -> None:
        if not self.alive():
            return
        # Once only: a worker takes a second SIGTERM as "exit now, skip the clean-up".
        if not self.terminated:
            self.terminated = True
            self.popen.send_signal(signal.SIGTERM)
        if not wait:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class Stack:
    """The API and its workers on one database."""

    database_url: str
    root: Path
    env: dict[str, str]
    api: Proc | None = None
    key: str = ""
    http: httpx.Client | None = None
    # Workers with the base settings, kept between tests.
    pool: list[Proc] = field(default_factory=list)
    # Everything spawned, for teardown.
    spawned: list[Proc] = field(default_factory=list)
    # Spawned by the current test with its own settings: stopped after it.
    extra: list[Proc] = field(default_factory=list)
    # Settings of base worker i (its own artifact directory, say).
    worker_env: Callable[[int], dict[str, str]] = lambda _i: {}
    _count: int = 0

    @property
    def artifact_dir(self) -> Path:
        return Path(self.env["STILLHOUSE_ARTIFACT_DIR"])

    def run_cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "stillhouse"), *args],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, name: str, *args: str, **env: str) -> Proc:
        self._count += 1
        log = self.root / f"{self._count:02d}-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(BIN / "stillhouse"), *args],
                env={**self.env, **env},
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.spawned.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.spawned)

    # -- workers
    def start_worker(self, *, pool: bool = True, **env: str) -> Proc:
        if pool:
            env = {**self.worker_env(len(self.pool)), **env}
        proc = self.spawn("worker", "worker", **env)
        (self.pool if pool else self.extra).append(proc)
        return proc

    def wait_ready(self, *procs: Proc) -> None:
        for proc in procs:

            def ready(proc: Proc = proc) -> bool:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited early\n{proc.tail()}")
                match = WORKER_READY.search(proc.output())
                if match:
                    proc.worker_id = match.group(1)
                return bool(match)

            wait_for(f"{proc.name} to start", ready, START_TIMEOUT, self.logs())

    def workers(self, n: int, *, exactly: bool = False) -> list[Proc]:
        """At least (or exactly) `n` idle base workers, started as needed."""
        self.pool = [p for p in self.pool if p.alive()]
        while exactly and len(self.pool) > n:
            self.pool.pop().stop()
        new = [self.start_worker() for _ in range(n - len(self.pool))]
        self.wait_ready(*new)
        return list(self.pool)

    def worker_by_id(self, worker_id: str) -> Proc:
        for proc in self.spawned:
            if proc.worker_id == worker_id:
                return proc
        raise AssertionError(f"no spawned worker is {worker_id}\n{self.logs()}")

    # -- HTTP
    def client(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.client().post("/api/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client().get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_state(self, job_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        return wait_for(f"job {job_id} in {states}", probe, timeout, self.logs())

    def events(self, job_id: str, *, last_event_id: int | None = None) -> list[Event]:
        """The job's event stream, read until the server ends it (after the final state)."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        with self.client().stream(
            "GET",
            f"/api/v1/jobs/{job_id}/events",
            headers=headers,
            timeout=httpx.Timeout(30.0),
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return parse_sse(response.iter_lines())

    def events_so_far(self, job_id: str) -> list[Event]:
        """The events stored so far (the stream of a running job would not end)."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(JobEvent.id, JobEvent.type, JobEvent.data)
                    .where(JobEvent.job_id == job_id)
                    .order_by(JobEvent.id)
                ).all()
        finally:
            engine.dispose()
        return [Event(r[0], r[1], r[2]) for r in rows]

    def clear_jobs(self) -> None:
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                for table in ("job_events", "jobs", "models"):
                    conn.execute(text(f"DELETE FROM {table}"))
        finally:
            engine.dispose()


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> list[Event]:
    events: list[Event] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in current:
                events.append(
                    Event(
                        int(current["id"]),
                        current.get("event", "message"),
                        json.loads(current["data"]),
                    )
                )
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


def _process_env(database_url: str, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env.update(BASE_ENV)
    env.update(
        STILLHOUSE_DATABASE_URL=database_url,
        STILLHOUSE_ARTIFACT_DIR=str(root / "artifacts"),
        STILLHOUSE_DATA_ROOT=str(root / "data"),
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def running_stack(
    database_url: str,
    root: Path,
    *,
    env: dict[str, str] | None = None,
    api_env: dict[str, str] | None = None,
    worker_env: Callable[[int], dict[str, str]] | None = None,
) -> Iterator[Stack]:
    """The API and two workers on an empty, migrated database. `env` adds settings for
    every process; `api_env` and `worker_env(i)` for the API and for base worker i."""
    _empty(database_url)
    stack = Stack(
        database_url=database_url,
        root=root,
        env={**_process_env(database_url, root), **(env or {})},
    )
    if worker_env is not None:
        stack.worker_env = worker_env
    try:
        migrated = stack.run_cli("migrate")
        assert migrated.returncode == 0, migrated.stderr
        created = stack.run_cli("keys", "create", "--owner", "e2e")
        assert created.returncode == 0, created.stderr
        stack.key = created.stdout.strip()
        port = free_port()
        # Two workers import torch while the API does: the start-ups overlap.
        stack.api = stack.spawn(
            "api", "api", "--host", "127.0.0.1", "--port", str(port), **(api_env or {})
        )
        first = [stack.start_worker() for _ in range(2)]
        stack.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {stack.key}"},
            timeout=30.0,
        )

        def api_ready() -> bool:
            assert stack.api is not None
            if not stack.api.alive():
                raise AssertionError(f"the API exited\n{stack.api.tail()}")
            try:
                return stack.client().get("/v2/health/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for("the API to answer", api_ready, START_TIMEOUT, stack.logs())
        stack.wait_ready(*first)
        yield stack
    finally:
        if stack.http is not None:
            stack.http.close()
        for proc in reversed(stack.spawned):
            proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def e2e_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The API and two workers on an empty, migrated database of each backend."""
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    with running_stack(database_url, root) as stack:
        yield stack


@pytest.fixture
def stack(e2e_stack: Stack) -> Iterator[Stack]:
    """The module's stack; after the test, its own extra processes stop and the jobs go."""
    e2e_stack.extra = []
    try:
        yield e2e_stack
    finally:
        for proc in e2e_stack.extra:
            # Reaped at module teardown; an idle worker needs no waiting for.
            proc.stop(wait=False)
        e2e_stack.extra = []
        e2e_stack.pool = [p for p in e2e_stack.pool if p.alive()]
        # A worker still on one of this test's jobs loses its lease and goes back to polling.
        e2e_stack.clear_jobs()
