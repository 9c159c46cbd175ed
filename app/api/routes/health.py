"""Health (OIP's /v2/health/live and /ready) and Prometheus /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.db import get_engine
from app.metrics import REGISTRY
from app.services.examples import METRICS_TEXT

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get(
    "/v2/health/live",
    summary="The process is up",
    responses={200: {"content": {"application/json": {"example": {"live": True}}}}},
    description='Answers 200 `{"live": true}` while the process runs, without touching the '
    "database. Needs no key.",
)
def live() -> dict[str, bool]:
    return {"live": True}


def _database_ready() -> str | None:
    """None when the database answers and is migrated; else why not."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1 FROM alembic_version"))
    except Exception as exc:
        return f"database not ready: {type(exc).__name__}"
    return None


@router.get(
    "/v2/health/ready",
    summary="Ready: the database answers (503 until it does)",
    responses={
        503: {"description": "The database does not answer (or is not migrated)"},
        200: {"content": {"application/json": {"example": {"ready": True}}}},
    },
    description='Answers 200 `{"ready": true}` when the database answers and is migrated; '
    'until then 503 `{"ready": false, "error": "..."}` saying why. Needs no key: a load '
    "balancer or orchestrator can probe it.",
)
async def ready() -> JSONResponse:
    problem = await run_in_threadpool(_database_ready)
    if problem is not None:
        return JSONResponse({"ready": False, "error": problem}, status_code=503)
    return JSONResponse({"ready": True})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": METRICS_TEXT}}}},
    description="Answers the Prometheus text exposition: jobs by state, the queue's depth "
    "and its oldest job's age (read from the database at scrape time), job durations, HTTP "
    "latency by route, and per model the prediction latency, batch sizes, forward time and "
    "model cache. Needs no key.",
)
async def metrics() -> Response:
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
