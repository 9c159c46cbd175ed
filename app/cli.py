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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class CommandError(RuntimeError):
    """A command that cannot go on: its one-line message, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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
        _write_json(keys)
        return 0
    rows = [
        [k["prefix"], k["owner"], _when(k["created_at"]), _when(k["revoked_at"]) or "-"]
        for k in keys
    ]
    _table(["PREFIX", "OWNER", "CREATED", "REVOKED"], rows, empty="no keys")
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
        when = _when(key.revoked_at.isoformat())
        sys.stdout.write(f"{key.prefix} (owner {key.owner}) was already revoked at {when}\n")
    return 0


# --------------------------------------------------------------------------- client
# As the API names them (app/models/job.py, app/schemas/job_spec.py); not imported, so
# that a client command loads no ORM.
JOB_STATES = ("QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED")
JOB_KINDS = ("pipeline", "distill", "finetune", "train")


def _client():
    from app.client import Client

    settings = get_settings()
    return Client(settings.api_url, settings.api_key)


def _submit(args: argparse.Namespace) -> int:
    from app.client import follow

    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {args.spec}: {exc}", 2) from exc
    client = _client()
    job = client.submit(spec, idempotency_key=args.idempotency_key)
    sys.stdout.write(json.dumps({"id": job["id"], "state": job["state"]}) + "\n")
    sys.stdout.flush()
    if not args.wait:
        return 0
    with _still_running(job["id"]):
        final = follow(client, job)
    sys.stdout.write(json.dumps(_summary(final), indent=2) + "\n")
    return 0 if final["state"] == "SUCCEEDED" else 1


@contextmanager
def _still_running(job_id: str) -> Iterator[None]:
    """Ctrl-C while following a job stops the following, not the job: say so."""
    try:
        yield
    except KeyboardInterrupt:
        raise CommandError(
            f"stopped following job {job_id}; it goes on (stillhouse cancel {job_id} stops it)",
            130,
        ) from None


def _summary(job: dict) -> dict:
    keys = ("id", "state", "error", "metrics", "model_id", "report")
    return {k: job.get(k) for k in keys if job.get(k) is not None}


def _status(args: argparse.Namespace) -> int:
    job = _client().job(args.job_id)
    if args.json:
        _write_json(job)
    else:
        sys.stdout.write(status_text(job))
    return 0


def status_text(job: dict[str, Any]) -> str:
    """A job in a few lines: state, stage, progress, metrics, error, model, summary, times."""
    from app.client import ACTIVE_STATES, JobProgress, duration, elapsed, metric_text

    progress = JobProgress(job)
    name = f", {job['name']!r}" if job.get("name") else ""
    rows = [
        ("job", f"{job['id']} ({job['kind']}{name})"),
        ("state", f"{job['state']}, attempt {job.get('attempts')} of {job.get('max_attempts')}"),
    ]
    if job.get("waiting_reason"):
        rows.append(("waiting", job["waiting_reason"]))
    # A finished job's last stage says little; where a job stopped says much.
    if progress.position() is not None and job["state"] != "SUCCEEDED":
        rows.append(("stage", progress.position()))
    if job["state"] in ACTIVE_STATES and progress.stage_detail():
        rows.append(("progress", ", ".join(progress.stage_detail())))
    if job.get("metrics"):
        rows.append(("metrics", metric_text(job["metrics"])))
    if job.get("error"):
        rows.append(("error", f"{job['error'].get('code')}: {job['error'].get('message')}"))
    if job.get("model_id"):
        rows.append(("model", job["model_id"]))
    summary = (job.get("report") or {}).get("summary")
    if isinstance(summary, str):
        rows.append(("summary", summary))
    times = f"created {_when(job['created_at'])} ({_age(job['created_at'])} ago)"
    took = elapsed(job.get("started_at"), job.get("finished_at"))
    if took is not None:
        times += f", ran {duration(took)}"
    rows.append(("time", times))
    return "".join(f"{label:<9} {value}\n" for label, value in rows)


def _jobs(args: argparse.Namespace) -> int:
    jobs, token = _client().listing(
        "/api/v1/jobs",
        "jobs",
        limit=args.limit,
        page_token=args.page_token,
        state=args.state,
        kind=args.kind,
    )
    if args.json:
        _write_json({"jobs": jobs, "next_page_token": token})
        return 0
    rows = [
        [
            j["id"],
            j.get("name") or "-",
            j["kind"],
            j["state"],
            _job_progress(j),
            _age(j["created_at"]),
        ]
        for j in jobs
    ]
    _table(["ID", "NAME", "KIND", "STATE", "PROGRESS", "AGE"], rows, empty="no jobs")
    _more("jobs", args.limit, token)
    return 0


def _job_progress(job: dict[str, Any]) -> str:
    """A running job's stage among its stages and its epoch; "-" for any other."""
    from app.client import ACTIVE_STATES, JobProgress

    if job["state"] not in ACTIVE_STATES:
        return "-"
    progress = JobProgress(job)
    return ", ".join([progress.position() or "-", *progress.stage_detail()[:1]])


def _models(args: argparse.Namespace) -> int:
    models, token = _client().listing(
        "/api/v1/models", "models", limit=args.limit, page_token=args.page_token
    )
    if args.json:
        _write_json({"models": models, "next_page_token": token})
        return 0
    rows = []
    for m in models:
        accuracy = (m.get("metrics") or {}).get("accuracy")
        rows.append(
            [
                m["id"],
                m.get("name") or "-",
                m["arch"],
                _count(m["params"]),
                _bytes(m["size_bytes"]),
                f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
                _when(m["created_at"]),
            ]
        )
    columns = ["ID", "NAME", "ARCH", "PARAMS", "SIZE", "ACCURACY", "CREATED"]
    _table(columns, rows, empty="no models")
    _more("models", args.limit, token)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = _client().cancel(args.job_id)
    sys.stdout.write(f"{job['id']} {job['state']}\n")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from app.client import event_line

    with _still_running(args.job_id):
        for event_type, data in _client().events(args.job_id):
            sys.stdout.write(event_line(event_type, data) + "\n")
            sys.stdout.flush()
    return 0


def _predict(args: argparse.Namespace) -> int:
    for image in args.images:
        if not Path(image).is_file():
            raise CommandError(f"cannot read {image}: no such file", 2)
    result = _client().predict(args.model_id, [Path(p) for p in args.images], k=args.k)
    _write_json(result)
    return 0


# ------------------------------------------------------------------------- output
def _write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _table(columns: list[str], rows: list[list[str]], *, empty: str) -> None:
    """A table on stdout: rich's on a terminal; elsewhere plain columns, two spaces apart
    and never cut, for grep, awk and logs."""
    if not rows:
        # On stderr: stdout stays what a script reads (nothing).
        sys.stderr.write(empty + "\n")
        return
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # On a narrow terminal the first column (an id or prefix that other commands
        # take) stays whole; the others wrap, or are cut short ("CANCELL...").
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column(columns[0], no_wrap=True, min_width=widths[0])
        for name in columns[1:]:
            table.add_column(name)
        for row in rows:
            # Text: a job name with [brackets] is not rich markup.
            table.add_row(*(Text(cell) for cell in row))
        Console().print(table)
        return
    for row in [columns, *rows]:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _more(what: str, limit: int, token: str | None) -> None:
    if token:
        sys.stderr.write(f"more {what}: raise --limit (now {limit}) or pass --page-token {token}\n")


def _when(value: str | None) -> str | None:
    """An API time as "2025-06-01 12:03Z" (UTC, to the minute)."""
    if not value:
        return None
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _age(value: str) -> str:
    """How long ago: 45s, 12m, 3h, 2d."""
    seconds = max(0.0, (datetime.now(UTC) - datetime.fromisoformat(value)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _count(n: int) -> str:
    """Parameters: 1.23M, 45.6k, 980."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    """Sizes in binary units: 4.7 MiB, 312 KiB."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


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

    client = argparse.ArgumentParser(add_help=False)
    client.set_defaults(client=True)

    p = sub.add_parser("submit", parents=[client], help="submit a job spec (JSON file)")
    p.add_argument("spec", metavar="SPEC.json")
    p.add_argument(
        "--wait", action="store_true", help="follow progress on one line; exit 1 unless it succeeds"
    )
    p.add_argument("--idempotency-key", default=None)
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", parents=[client], help="a job in a few lines")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="the whole job, as the API answers it")
    p.set_defaults(func=_status)

    p = sub.add_parser("jobs", parents=[client], help="your jobs, newest first")
    p.add_argument("--state", type=str.upper, choices=JOB_STATES, default=None)
    p.add_argument("--kind", type=str.lower, choices=JOB_KINDS, default=None)
    _paging_flags(p, "jobs")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("cancel", parents=[client], help="cancel a job; prints its new state")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_cancel)

    p = sub.add_parser(
        "logs", parents=[client], help="follow a job's events until it ends (from its start)"
    )
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_logs)

    p = sub.add_parser("models", parents=[client], help="your finished models, newest first")
    _paging_flags(p, "models")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "predict", parents=[client], help="predict image files with a finished model"
    )
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-k", type=int, default=3, help="top-k labels per image")
    p.set_defaults(func=_predict)
    return parser


def _paging_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit", type=_positive, default=50, help=f"show at most this many {what} (default 50)"
    )
    parser.add_argument(
        "--page-token", default=None, help="continue a listing (--json gives next_page_token)"
    )
    parser.add_argument(
        "--json", action="store_true", help=f'{{"{what}": [...], "next_page_token"}} as the API'
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _client_logging(level: str) -> None:
    """Logging for the client commands: one plain line a message, and no library chatter
    (httpx logs every request at INFO, which would cut into the progress line)."""
    logging.basicConfig(level=level.upper(), format="%(levelname)s: %(message)s")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = get_settings().log_level
    if getattr(args, "client", False):
        _client_logging(level)
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
