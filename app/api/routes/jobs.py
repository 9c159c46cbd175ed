"""/api/v1/jobs: submit, list, get, cancel, delete, stream events, metric history."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import problems
from app.db import get_sessionmaker
from app.models import FINISHED_STATES, Job, JobState
from app.schemas.job import JobList, JobOut, MetricHistory
from app.schemas.job_spec import JobSpec
from app.services import jobs as jobs_service
from app.services.errors import InvalidError, field_error
from app.services.examples import JOB_EXAMPLES
from app.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

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
    return jobs_service.job_out(job)


@router.get("", response_model=JobList, responses=ERRORS, summary="List jobs, newest first")
def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    state: Annotated[JobState | None, Query()] = None,
    kind: Annotated[Literal["pipeline", "distill", "finetune", "train"] | None, Query()] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query()] = None,
) -> JobList:
    rows, token = jobs_service.list_jobs(
        session, owner=owner, state=state, kind=kind, page_size=page_size, page_token=page_token
    )
    return JobList(jobs=[jobs_service.job_out(j) for j in rows], next_page_token=token)


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS, summary="Get a job")
def get_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobOut:
    return jobs_service.job_out(jobs_service.get_owned(session, owner, job_id))


@router.post(
    "/{job_id}:cancel",
    status_code=202,
    response_model=JobOut,
    responses=problems(401, 404, 409, what="job", custom={409: "The job already finished"}),
    summary="Cancel a job (CANCELLED if queued, CANCELLING while it runs)",
)
def cancel_job(job_id: str, owner: OwnerDep, session: WriteSessionDep) -> JobOut:
    return jobs_service.job_out(jobs_service.cancel_job(session, owner=owner, job_id=job_id))


@router.delete(
    "/{job_id}",
    status_code=204,
    responses=problems(401, 404, 409, what="job", custom={409: "The job has not finished"}),
    summary="Delete a finished job (its model stays)",
)
def delete_job(
    job_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    jobs_service.delete_job(session, owner=owner, job_id=job_id, artifact_dir=settings.artifact_dir)
    return Response(status_code=204)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricHistory,
    responses=ERRORS,
    summary="Metric history, per stage and epoch",
)
def job_metrics(job_id: str, owner: OwnerDep, session: SessionDep) -> MetricHistory:
    return jobs_service.metric_history(session, owner=owner, job_id=job_id)


@router.get(
    "/{job_id}/events",
    responses={
        **ERRORS,
        200: {
            "description": "Server-Sent Events: `progress`, `metric`, `log` and `state`, each "
            "with an `id:`; reconnect with Last-Event-ID (or ?after=) to resume. The stream "
            "ends after the job's final state event.",
            "content": {"text/event-stream": {}},
        },
    },
    response_class=StreamingResponse,
    summary="Stream a job's events",
)
def job_events(
    job_id: str,
    owner: OwnerDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Resume after this event id.")
    ] = None,
) -> StreamingResponse:
    jobs_service.get_owned(session, owner, job_id)
    start = after or 0
    if last_event_id is not None:
        try:
            resume = int(last_event_id)
        except ValueError:
            resume = MAX_EVENT_ID + 1
        if resume > MAX_EVENT_ID:
            raise InvalidError([field_error("header.Last-Event-ID", "must be an event id")])
        start = max(start, resume)
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
