"""`stillhouse`: the server, the worker, migrations, keys, and an HTTP client.

Server-side commands import their modules lazily, so that the client commands start
fast. The worker is its own program (`python -m worker`): `stillhouse worker` replaces
itself with it, and `stillhouse serve` starts it beside the API, so that nothing under
`app/` imports the worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

# This module is the server half and the parser (its docstring is `stillhouse --help`'s
# text); the client commands are in app.cli_client, what both halves print in app.cli_output.
from app.cli_client import add_client_commands, client_logging
from app.cli_output import CommandError, table, when_text, write_json
from app.config import get_settings
from app.logging_setup import configure_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("stillhouse")


def _migrate(_: argparse.Namespace) -> int:
    from app.migrate import upgrade_head

    upgrade_head()
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _run_api(host: str, port: int, workers: int) -> None:
    import uvicorn

    # The serving processes read the count from the environment (they are spawned, and
    # each sizes its forward passes' threads by it: app/serving/backends.py).
    os.environ["STILLHOUSE_API_WORKERS"] = str(workers)
    get_settings.cache_clear()
    log.info("API on %s:%d with %d serving process(es)", host, port, workers)
    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        # One process serves in this one; more are uvicorn's workers on one socket, each
        # with its own event loop, model cache and batchers.
        workers=workers,
        log_level=get_settings().log_level.lower(),
        timeout_graceful_shutdown=5,
    )


def _api(args: argparse.Namespace) -> int:
    _run_api(args.host, args.port, args.workers or get_settings().api_processes())
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
        _run_api(args.host, args.port, args.workers)
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


@contextmanager
def _key_session(doing: str) -> Iterator[Session]:
    """A write session on the configured database, for the key commands; a database that
    is down or not migrated is a CommandError that says so."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import get_write_sessionmaker

    try:
        with get_write_sessionmaker()() as session:
            yield session
    except SQLAlchemyError as exc:
        raise CommandError(
            f"could not {doing} ({getattr(exc, 'orig', None) or exc}); "
            "is the database up and migrated (stillhouse migrate)?"
        ) from exc


def _keys_create(args: argparse.Namespace) -> int:
    from app.services.keys import create_key

    try:
        with _key_session("store the key") as session:
            key = create_key(session, owner=args.owner)
    except ValueError as exc:
        raise CommandError(f"--owner: {exc}", 2) from exc
    sys.stdout.write(key + "\n")
    log.info("created a key for owner %r (only its hash is stored)", args.owner)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from app.services.keys import list_keys

    with _key_session("read the keys") as session:
        keys = [
            {
                "prefix": k.prefix,
                "owner": k.owner,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in list_keys(session, owner=args.owner)
        ]
    if args.json:
        write_json(keys)
        return 0
    rows = [
        [k["prefix"], k["owner"], when_text(k["created_at"]), when_text(k["revoked_at"]) or "-"]
        for k in keys
    ]
    table(["PREFIX", "OWNER", "CREATED", "REVOKED"], rows, empty="no keys")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from app.services.errors import InvalidError, NotFoundError
    from app.services.keys import revoke_key

    try:
        with _key_session("revoke the key") as session:
            key, revoked_now = revoke_key(session, args.prefix)
    except (NotFoundError, InvalidError) as exc:
        raise CommandError(exc.detail, 2) from exc
    assert key.revoked_at is not None
    if revoked_now:
        sys.stdout.write(f"revoked {key.prefix} (owner {key.owner})\n")
        log.info(
            "every API process refuses it now; prediction routes may accept it for up to "
            "STILLHOUSE_SERVING_LOOKUP_TTL_SECONDS (%gs) more",
            get_settings().serving_lookup_ttl_seconds,
        )
    else:
        when = when_text(key.revoked_at.isoformat())
        sys.stdout.write(f"{key.prefix} (owner {key.owner}) was already revoked at {when}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="migrate, then run the API with one embedded worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="API (serving) processes on the port (default 1: the embedded worker trains "
        "on the same cores)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("api", help="run the API alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="serving processes on the port, each with its own model cache (default: "
        "STILLHOUSE_API_WORKERS, else one per core, at most 8)",
    )
    p.set_defaults(func=_api)

    p = sub.add_parser("worker", help="run one worker (claims jobs from the database)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.set_defaults(func=_worker)

    p = sub.add_parser("migrate", help="alembic upgrade head on the configured database")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("keys", help="API keys (on the configured database)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="print a new API key for an owner")
    k.add_argument("--owner", required=True)
    k.set_defaults(func=_keys_create)
    k = keys.add_parser("list", help="the keys: prefix, owner, created, revoked (never the key)")
    k.add_argument("--owner", default=None, help="only this owner's keys")
    k.add_argument("--json", action="store_true", help="a JSON list")
    k.set_defaults(func=_keys_list)
    k = keys.add_parser("revoke", help="revoke the key with this prefix (see keys list)")
    k.add_argument("prefix", metavar="KEY_PREFIX", help="the prefix keys list shows, or the key")
    k.set_defaults(func=_keys_revoke)

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = get_settings().log_level
    if getattr(args, "client", False):
        client_logging(level)
    else:
        configure_logging(level)
    import httpx

    from app.client import ClientError

    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        log.error("%s", exc)
        return exc.code
    except ClientError as exc:
        log.error("%s", exc)
        return 1
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        # The client commands: no server at STILLHOUSE_API_URL, or it went away.
        log.error("cannot reach the API at %s: %s", get_settings().api_url, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `stillhouse logs ID | head`: the reader left. Python's advice: point stdout at
        # devnull so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
