"""Submit to RUNNING: how long a job waits for an idle worker.

Starts the real `stillhouse api` and `--workers` idle `stillhouse worker`s (default
settings, so each polls every `STILLHOUSE_POLL_SECONDS` = 0.2 s) on SQLite and, when
reachable, on Postgres twice: with polling alone (`STILLHOUSE_JOB_NOTIFY=false`, the
baseline) and with LISTEN/NOTIFY waking the idle workers (the default, worker/wakeup.py).
Submits tiny jobs one at a time, each once the workers are idle again, and reports per
backend:

- `server`: the job's `started_at - created_at`, both stamped by the service (the API's
  insert and the worker's claim): what the user's job actually waited.
- `client`: from the POST's response to the first GET that shows the job started, polling
  every 10 ms (adds up to 10 ms and one request of noise).

Submissions are spaced by a random 0.3-0.8 s after the previous job ends, so that they
fall anywhere in the worker's poll cycle: with a 0.2 s poll the wait is then 0-0.2 s plus
the claim itself.

    .venv/bin/python -m bench.submit_latency [--quick] [--jobs N] [--workers 8]

The goal in issue 2 is under 1 second; in issue 11, a p50 under 50 ms with 8 idle
workers on Postgres with NOTIFY (105 ms by polling).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

log = logging.getLogger("bench.submit_latency")

BIN = Path(sys.executable).parent / "stillhouse"
PG_ADMIN_URL = os.environ.get(
    "STILLHOUSE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# Client-side polling cadence (seconds).
POLL = 0.01
START_TIMEOUT = 120.0
TINY_SPEC: dict[str, Any] = {
    "kind": "train",
    "name": "latency-probe",
    "model": {"arch": "small_cnn", "width": 0.25},
    "train": {
        "dataset": {"name": "digits", "classes": [0, 1], "samples_per_class": 20},
        "epochs": 1,
        "batch_size": 16,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        # Nearest rank: with 20 samples, p95 is the 19th.
        return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]

    return {
        "p50": round(statistics.median(ordered), 4),
        "p95": round(pct(0.95), 4),
        "max": round(ordered[-1], 4),
        "mean": round(statistics.fmean(ordered), 4),
    }


@contextmanager
def _postgres_database() -> Iterator[str | None]:
    name = f"stillhouse_bench_{secrets.token_hex(4)}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        log.warning("Postgres at %s is not reachable (%s); SQLite only", PG_ADMIN_URL, exc)
        yield None
        return
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _stack(
    database_url: str, root: Path, *, workers: int = 1, extra: dict[str, str] | None = None
) -> Iterator[httpx.Client]:
    """The API and `workers` idle workers, with default settings apart from the storage
    paths (and `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env.update(
        STILLHOUSE_DATABASE_URL=database_url,
        STILLHOUSE_ARTIFACT_DIR=str(root / "artifacts"),
        STILLHOUSE_DATA_ROOT=str(root / "data"),
        STILLHOUSE_DEVICE="cpu",
        # Idle workers wait; the one that claims trains on one thread, so that the
        # measurement is the queue's, not 8 workers fighting over 2 cores.
        STILLHOUSE_THREADS="1",
        STILLHOUSE_API_WORKERS="1",
        **(extra or {}),
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, check=True, cwd=root
        )
        return done.stdout.strip()

    cli("migrate")
    key = cli("keys", "create", "--owner", "bench")
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        names = [("api", ["api", "--port", str(port)])]
        names += [(f"worker-{i}", ["worker"]) for i in range(workers)]
        for name, args in names:
            out = (root / f"{name}.log").open("wb")
            logs.append(out)
            procs.append(
                subprocess.Popen(
                    [str(BIN), *args], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT
                )
            )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30.0,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if client.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the API did not start; see {root / 'api.log'}")
            time.sleep(0.05)
        for i in range(workers):
            worker_log = root / f"worker-{i}.log"
            while b"polling every" not in worker_log.read_bytes():
                if time.monotonic() > deadline or procs[1 + i].poll() is not None:
                    raise RuntimeError(f"the worker did not start; see {worker_log}")
                time.sleep(0.05)
        yield client
        client.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for out in logs:
            out.close()


def _measure(client: httpx.Client, jobs: int) -> dict[str, Any]:
    server: list[float] = []
    observed: list[float] = []
    # Submitting right after the previous job ends would always land at the same point of
    # the worker's poll cycle; a random pause spreads submissions over the whole cycle.
    pauses = random.Random(0)
    # One warm-up job: the worker's first job pays for lazy imports and data loading.
    for i in range(jobs + 1):
        time.sleep(pauses.uniform(0.3, 0.8))
        r = client.post("/api/v1/jobs", json=TINY_SPEC)
        r.raise_for_status()
        answered = time.perf_counter()
        job_id = r.json()["id"]
        seen_running: float | None = None
        deadline = time.monotonic() + 120
        while True:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if seen_running is None and job["started_at"] is not None:
                seen_running = time.perf_counter() - answered
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish")
            time.sleep(POLL)
        if job["state"] != "SUCCEEDED":
            raise RuntimeError(f"job {job_id} ended {job['state']}: {job['error']}")
        if i == 0:
            continue
        assert seen_running is not None
        started = _parse_time(job["started_at"]) - _parse_time(job["created_at"])
        server.append(started.total_seconds())
        observed.append(seen_running)
    return {"jobs": jobs, "server": _percentiles(server), "client": _percentiles(observed)}


def run(quick: bool = False, jobs: int | None = None, workers: int = 1) -> dict[str, Any]:
    """Measure submit -> RUNNING on each reachable backend; returns the figures. On
    Postgres twice: polling alone (the baseline, STILLHOUSE_JOB_NOTIFY=false) and with
    LISTEN/NOTIFY (the default)."""
    n = jobs or (5 if quick else 20)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU used",
        "python": platform.python_version(),
        "poll_seconds": "default (0.2)",
        "idle_workers": workers,
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="stillhouse-bench-") as tmp, _postgres_database() as pg:
        root = Path(tmp)
        sqlite = f"sqlite:///{root / 'sqlite' / 'stillhouse.db'}"
        runs: list[tuple[str, str, dict[str, str]]] = [("sqlite", sqlite, {})]
        if pg is not None:
            runs += [
                ("postgres (polling)", pg, {"STILLHOUSE_JOB_NOTIFY": "false"}),
                ("postgres", pg, {}),
            ]
        for i, (name, url, extra) in enumerate(runs):
            (root / str(i)).mkdir(exist_ok=True)
            log.info("%s: starting the API and %d worker(s)", name, workers)
            with _stack(url, root / str(i), workers=workers, extra=extra) as client:
                results["backends"][name] = _measure(client, n)
            log.info("%s: %s", name, results["backends"][name])
        if pg is not None:
            polling = results["backends"]["postgres (polling)"]["server"]["p50"]
            notify = results["backends"]["postgres"]["server"]["p50"]
            results["notify_speedup_p50"] = round(polling / max(notify, 1e-6), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 jobs per backend instead of 20")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per backend")
    parser.add_argument("--workers", type=int, default=1, help="idle workers (issue 11: 8)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = run(quick=args.quick, jobs=args.jobs, workers=args.workers)
    print(json.dumps(results, indent=2))
    print()
    print("| backend | jobs | server p50 | p95 | max | client p50 | p95 | max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results["backends"].items():
        s, c = r["server"], r["client"]
        print(
            f"| {name} | {r['jobs']} | {s['p50']:.3f} s | {s['p95']:.3f} s | {s['max']:.3f} s "
            f"| {c['p50']:.3f} s | {c['p95']:.3f} s | {c['max']:.3f} s |"
        )


if __name__ == "__main__":
    main()
