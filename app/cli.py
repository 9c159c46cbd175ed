"""`stillhouse`: the server, the worker, migrations, keys, and an HTTP client.

Server-side commands import their modules lazily, so that the client commands start
fast. The worker is its own program (`python -m worker`): `stillhouse worker` replaces
itself with it, and `stillhouse serve` starts it beside the API, so that nothing under
`app/` imports the worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.config import get_settings
from app.logging_setup import configure_logging

log = logging.getLogger("stillhouse")


def _migrate(_: argparse.Namespace) -> int:
    from app.migrate import upgrade_head

    upgrade_head()
    return 0


def _run_api(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        log_level=get_settings().log_level.lower(),
        timeout_graceful_shutdown=5,
    )


def _api(args: argparse.Namespace) -> int:
    _run_api(args.host, args.port)
    return 0


def worker_command(device: str | None) -> list[str]:
    """The worker program's command line, run with this interpreter."""
    command = [sys.executable, "-m", "worker"]
    return command + (["--device", device] if device else [])


def _worker(args: argparse.Namespace) -> int:
    # exec: the worker keeps this process's id, so signals sent to it reach the worker.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, worker_command(args.device))
    return 0  # not reached


def _serve(args: argparse.Namespace) -> int:
    """Migrate, start one worker process beside the API, and stop it with the API."""
    from app.migrate import upgrade_head

    upgrade_head()
    # uvicorn handles SIGTERM, shuts down, then raises the signal again for the previous
    # handler. With the default one that kills this process on the spot, `finally` below
    # never runs and the worker outlives the API; this handler unwinds through it instead.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    worker = subprocess.Popen(worker_command(args.device), env=os.environ.copy())
    log.info("embedded worker started (pid %d)", worker.pid)
    try:
        _run_api(args.host, args.port)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _keys_create(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import get_write_sessionmaker
    from app.services.keys import create_key

    try:
        with get_write_sessionmaker()() as session:
            key = create_key(session, owner=args.owner)
    except ValueError as exc:
        log.error("--owner: %s", exc)
        return 2
    except SQLAlchemyError as exc:
        log.error(
            "could not store the key (%s); is the database up and migrated (stillhouse migrate)?",
            getattr(exc, "orig", None) or exc,
        )
        return 1
    sys.stdout.write(key + "\n")
    log.info("created a key for owner %r (only its hash is stored)", args.owner)
    return 0


def _client():
    from app.client import Client

    settings = get_settings()
    return Client(settings.api_url, settings.api_key)


def _submit(args: argparse.Namespace) -> int:
    from app.client import follow

    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s", args.spec, exc)
        return 2
    client = _client()
    job = client.submit(spec, idempotency_key=args.idempotency_key)
    sys.stdout.write(json.dumps({"id": job["id"], "state": job["state"]}) + "\n")
    if not args.wait:
        return 0
    final = follow(client, job["id"])
    sys.stdout.write(json.dumps(_summary(final), indent=2) + "\n")
    return 0 if final["state"] == "SUCCEEDED" else 1


def _summary(job: dict) -> dict:
    keys = ("id", "state", "error", "metrics", "model_id", "report")
    return {k: job.get(k) for k in keys if job.get(k) is not None}


def _status(args: argparse.Namespace) -> int:
    job = _client().job(args.job_id)
    sys.stdout.write(json.dumps(job, indent=2) + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    for image in args.images:
        if not Path(image).is_file():
            log.error("cannot read %s: no such file", image)
            return 2
    result = _client().predict(args.model_id, [Path(p) for p in args.images], k=args.k)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="migrate, then run the API with one embedded worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=_serve)

    p = sub.add_parser("api", help="run the API alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_api)

    p = sub.add_parser("worker", help="run one worker (claims jobs from the database)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.set_defaults(func=_worker)

    p = sub.add_parser("migrate", help="alembic upgrade head on the configured database")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="print a new API key for an owner")
    k.add_argument("--owner", required=True)
    k.set_defaults(func=_keys_create)

    p = sub.add_parser("submit", help="submit a job spec (JSON file)")
    p.add_argument("spec")
    p.add_argument("--wait", action="store_true", help="follow progress; exit 1 unless it succeeds")
    p.add_argument("--idempotency-key", default=None)
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.set_defaults(func=_status)

    p = sub.add_parser("predict", help="predict image files with a finished model")
    p.add_argument("model_id")
    p.add_argument("images", nargs="+")
    p.add_argument("-k", type=int, default=3, help="top-k labels per image")
    p.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(get_settings().log_level)
    import httpx

    from app.client import ClientError

    try:
        return int(args.func(args) or 0)
    except ClientError as exc:
        log.error("%s", exc)
        return 1
    except httpx.TransportError as exc:
        # The client commands: no server at STILLHOUSE_API_URL, or it went away.
        log.error("cannot reach the API at %s: %s", get_settings().api_url, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
