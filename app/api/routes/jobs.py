"""/api/v1/jobs: submit, list, get, cancel, delete, stream events, metric history."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, PageSize, PageToken, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import example, problems
from app.config import Settings
from app.db import get_sessionmaker
from app.models import FINISHED_STATES, Job, JobState
from app.schemas.job import JobList, JobOut, MetricHistory
from app.schemas.job_spec import JobSpec
from app.services import examples
from app.services import jobs as jobs_service
from app.services.examples import JOB_EXAMPLES
from app.services.jobs import WorkerFigures
from app.services.paging import DEFAULT_PAGE_SIZE

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

ERRORS = problems(401, 404, 422, what="job")

# How often the event stream looks for new events (seconds), and sends a keep-alive.
STREAM_POLL_SECONDS = 0.25
STREAM_KEEPALIVE_SECONDS = 15.0
# Event ids are 64-bit integers in the database; a larger resume point cannot be bound to a
# query (SQLite raises OverflowError mid-stream, after the 200 has gone out).
MAX_EVENT_ID = 2**63 - 1


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        **problems(400, 401, 413, 422, custom={413: "Body larger than STILLHOUSE_MAX_SPEC_BYTES"}),
        200: {"description": "Replay of an Idempotency-Key", "model": JobOut},
    },
    summary="Submit a job",
    description="Checks the spec completely and queues the job for a worker: shape and "
    "ranges first, then names, classes, uploads and models against the registries and your "
    "own data, every problem at once (422, `errors` naming each field; invalid JSON too). "
    "Answers 201 with the QUEUED job, defaults filled into its `spec`, and a `Location` "
    "header. With an `Idempotency-Key` header the same key and body answer 200 with the "
    "first job, and the same key with another body answers 422. A body over "
    "STILLHOUSE_MAX_SPEC_BYTES (1 MiB) answers 413 before it is parsed; a Content-Length "
    "that is not a number, 400.",
)
async def create_job(
    request: Request,
    response: Response,
    spec: Annotated[JobSpec, Body(openapi_examples=JOB_EXAMPLES)],
    owner: OwnerDep,
    session: WriteSessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    raw = await request.json()
    job, created = await run_in_threadpool(
        jobs_service.create_job,
        session,
        owner=owner,
        spec=spec,
        raw_body=raw,
        idempotency_key=idempotency_key,
        default_max_attempts=settings.max_attempts,
    )
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    live = await run_in_threadpool(_live, session, settings, [job])
    return jobs_service.job_out(job, live)


@router.get(
    "",
    response_model=JobList,
    responses={**ERRORS, **example(200, examples.JOB_LIST)},
    summary="List jobs, newest first",
    description="Answers a page of your jobs, newest first: `page_size` of them (default "
    "50, at most 500), and `next_page_token` to pass as `page_token` for the next page (null "
    "on the last). `state` and `kind` keep only the jobs in that state or of that kind. Each "
    "job is the body GET /api/v1/jobs/{job_id} answers. A `page_token` this service did not "
    "issue answers 422.",
)
def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    state: Annotated[JobState | None, Query()] = None,
    kind: Annotated[Literal["pipeline", "distill", "finetune", "train"] | None, Query()] = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: PageToken = None,
) -> JobList:
    rows, token = jobs_service.list_jobs(
        session, owner=owner, state=state, kind=kind, page_size=page_size, page_token=page_token
    )
    live = _live(session, settings, rows)
    return JobList(jobs=[jobs_service.job_out(j, live) for j in rows], next_page_token=token)


@router.get(
    "/{job_id:id}",
    response_model=JobOut,
    responses={**ERRORS, **example(200, examples.SUCCEEDED_PIPELINE_JOB)},
    summary="Get a job",
    description="Answers the job: its spec as accepted, its state, current stage and "
    "progress, its latest metrics, and once it has finished its `error` (FAILED) or its "
    "`model_id` (SUCCEEDED), with a pipeline's `report` (teacher vs student: accuracy, "
    "parameters, size, latency, compression, speedup, and the scratch-trained baseline). "
    "Another owner's job answers 404, exactly like a missing one; the id of another kind of "
    "thing (a model's, say) answers 404 saying what it is.",
)
def get_job(job_id: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep) -> JobOut:
    job = jobs_service.get_owned(session, owner, job_id)
    return jobs_service.job_out(job, _live(session, settings, [job]))


def _live(session: Session, settings: Settings, jobs: Sequence[Job]) -> WorkerFigures | None:
    """The live workers, looked up only when a QUEUED job is shown (its waiting_reason)."""
    if not any(j.state == JobState.QUEUED for j in jobs):
        return None
    return jobs_service.live_workers(session, settings.stale_after_seconds)


@router.post(
    "/{job_id:id}:cancel",
    status_code=202,
    response_model=JobOut,
    responses={
        **problems(401, 404, 409, what="job", custom={409: "The job already finished"}),
        **example(202, examples.CANCELLING_PIPELINE_JOB),
    },
    summary="Cancel a job (CANCELLED if queued, CANCELLING while it runs)",
    description="Cancels the job and answers 202 with it. A QUEUED job is CANCELLED at "
    "once; a RUNNING one becomes CANCELLING, and its worker stops at its next training step "
    "(within about a second) and marks it CANCELLED. A job already CANCELLING or CANCELLED "
    "answers 202 unchanged; one that SUCCEEDED or FAILED answers 409.",
)
def cancel_job(job_id: str, owner: OwnerDep, session: WriteSessionDep) -> JobOut:
    return jobs_service.job_out(jobs_service.cancel_job(session, owner=owner, job_id=job_id))


@router.delete(
    "/{job_id:id}",
    status_code=204,
    responses=problems(
        401,
        404,
        409,
        what="job",
        custom={409: "The job has not finished"},
        examples={
            409: examples.conflict(
                f"/api/v1/jobs/{examples.PIPELINE_JOB_ID}",
                f"job {examples.PIPELINE_JOB_ID} is RUNNING; cancel it and wait for it to "
                "finish first",
            )
        },
    ),
    summary="Delete a finished job (its model stays)",
    description="Deletes a job that has finished (SUCCEEDED, FAILED or CANCELLED), with its "
    "events and checkpoints; the model it made stays until it is deleted on its own. "
    "Answers 204 with no body. A job still QUEUED, RUNNING or CANCELLING answers 409: cancel "
    "it and wait for it to finish first.",
)
def delete_job(
    job_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    jobs_service.delete_job(session, owner=owner, job_id=job_id, artifact_dir=settings.artifact_dir)
    return Response(status_code=204)


@router.get(
    "/{job_id:id}/metrics",
    response_model=MetricHistory,
    responses={**ERRORS, **example(200, examples.METRIC_HISTORY)},
    summary="Metric history, per stage and epoch",
    description="Answers every epoch's figures of the job in order (`metrics`), and the same "
    "grouped by stage (`stages`). Each epoch has train_loss, lr and, with class labels, "
    "train_accuracy; evaluated epochs add the evaluation set's figures prefixed val_ "
    "(val_agreement with the teacher in a distill stage). Empty until an epoch has ended.",
)
def job_metrics(job_id: str, owner: OwnerDep, session: SessionDep) -> MetricHistory:
    return jobs_service.metric_history(session, owner=owner, job_id=job_id)


@router.get(
    "/{job_id:id}/events",
    responses={
        **ERRORS,
        200: {
            "description": "Server-Sent Events: `progress`, `metric`, `log` and `state`, each "
            "with an `id:`; reconnect with Last-Event-ID (or ?after=) to resume. The stream "
            "ends after the job's final state event.",
            "content": {"text/event-stream": {"example": examples.EVENT_STREAM}},
        },
    },
    response_class=StreamingResponse,
    summary="Stream a job's events",
    description="Streams the job's events as Server-Sent Events, from its first (or after "
    "the id in Last-Event-ID or ?after=): `state` at each transition, `progress` when a stage "
    "starts and then about every STILLHOUSE_PROGRESS_INTERVAL_SECONDS (1 s) while it "
    "trains, `metric` once an epoch, and `log`. Each event has an `id:`, increasing, so a "
    "client that reconnects with the last id it saw misses nothing. A keep-alive comment "
    "goes out after 15 s of silence; the stream ends after the job's final state event.",
)
def job_events(
    job_id: str,
    owner: OwnerDep,
    session: SessionDep,
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{0,18}$",
            description="Resume after this event id (what EventSource sends on a "
            "reconnect); empty: from the start.",
        ),
    ] = "",
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Resume after this event id.")
    ] = None,
) -> StreamingResponse:
    jobs_service.get_owned(session, owner, job_id)
    start = after or 0
    if last_event_id:  # at most 18 digits (the pattern): always a storable event id
        start = max(start, int(last_event_id))
    return StreamingResponse(
        _stream(job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _poll(job_id: str, after: int) -> tuple[list[tuple[int, str, dict[str, Any]]], bool]:
    """New events after `after`, and whether the job had finished before we read them."""
    with get_sessionmaker()() as session:
        # State first: if it was final before the read, the read sees the final event too.
        job = session.get(Job, job_id)
        finished = job is None or job.state in FINISHED_STATES
        events = jobs_service.events_after(session, job_id, after)
        return [(e.id, e.type, e.data) for e in events], finished


async def _stream(job_id: str, after: int) -> AsyncIterator[bytes]:
    last_sent = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        events, finished = await run_in_threadpool(_poll, job_id, after)
        for event_id, type_, data in events:
            after = event_id
            yield f"id: {event_id}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()
            last_sent = time.monotonic()
        if finished and len(events) < 500:
            return
        if not events:
            if time.monotonic() - last_sent > STREAM_KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(STREAM_POLL_SECONDS)
