"""The client half of `stillhouse`: commands that talk to a running API over HTTP.

submit, status, jobs, cancel, logs, models and predict, through `app.client` (to
STILLHOUSE_API_URL, with STILLHOUSE_API_KEY). They load no ORM and no torch, so that
they start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.cli_output import (
    CommandError,
    age_text,
    count_text,
    more_hint,
    size_text,
    table,
    when_text,
    write_json,
)
from app.config import get_settings

# As the API names them (app/models/job.py, app/schemas/job_spec.py); not imported, so
# that a client command loads no ORM.
JOB_STATES = ("QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED")
JOB_KINDS = ("pipeline", "distill", "finetune", "train")


def _client():
    from app.client import Client

    settings = get_settings()
    return Client(settings.api_url, settings.api_key)


def _submit(args: argparse.Namespace) -> int:
    from app.job_progress import follow

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
        write_json(job)
    else:
        sys.stdout.write(status_text(job))
    return 0


def status_text(job: dict[str, Any]) -> str:
    """A job in a few lines: state, stage, progress, metrics, error, model, summary, times."""
    from app.job_progress import ACTIVE_STATES, JobProgress, duration, elapsed, metric_text

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
    times = f"created {when_text(job['created_at'])} ({age_text(job['created_at'])} ago)"
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
        write_json({"jobs": jobs, "next_page_token": token})
        return 0
    rows = [
        [
            j["id"],
            j.get("name") or "-",
            j["kind"],
            j["state"],
            _job_progress(j),
            age_text(j["created_at"]),
        ]
        for j in jobs
    ]
    table(["ID", "NAME", "KIND", "STATE", "PROGRESS", "AGE"], rows, empty="no jobs")
    more_hint("jobs", args.limit, token)
    return 0


def _job_progress(job: dict[str, Any]) -> str:
    """A running job's stage among its stages and its epoch; "-" for any other."""
    from app.job_progress import ACTIVE_STATES, JobProgress

    if job["state"] not in ACTIVE_STATES:
        return "-"
    progress = JobProgress(job)
    return ", ".join([progress.position() or "-", *progress.stage_detail()[:1]])


def _models(args: argparse.Namespace) -> int:
    models, token = _client().listing(
        "/api/v1/models", "models", limit=args.limit, page_token=args.page_token
    )
    if args.json:
        write_json({"models": models, "next_page_token": token})
        return 0
    rows = []
    for m in models:
        accuracy = (m.get("metrics") or {}).get("accuracy")
        rows.append(
            [
                m["id"],
                m.get("name") or "-",
                m["arch"],
                count_text(m["params"]),
                size_text(m["size_bytes"]),
                f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
                when_text(m["created_at"]),
            ]
        )
    columns = ["ID", "NAME", "ARCH", "PARAMS", "SIZE", "ACCURACY", "CREATED"]
    table(columns, rows, empty="no models")
    more_hint("models", args.limit, token)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = _client().cancel(args.job_id)
    sys.stdout.write(f"{job['id']} {job['state']}\n")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from app.job_progress import event_line

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
    write_json(result)
    return 0


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    """Register the client commands on `stillhouse`'s subcommands."""
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


def client_logging(level: str) -> None:
    """Logging for the client commands: one plain line a message, and no library chatter
    (httpx logs every request at INFO, which would cut into the progress line)."""
    logging.basicConfig(level=level.upper(), format="%(levelname)s: %(message)s")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
