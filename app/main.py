"""The FastAPI application: JSON API under /api/v1, Open Inference Protocol under /v2."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from app import __version__
from app.api.errors import install_error_handlers
from app.api.routes import health, jobs
from app.metrics import HTTP_LATENCY

DESCRIPTION = """
Stillhouse turns big models into small, fast, task-ready ones: submit a job spec, and a
worker trains or loads a teacher, distills it into a small student, fine-tunes the
student on your target task, reports what was gained and lost, and serves the student.

Every `/api/v1` and `/v2` route needs `Authorization: Bearer <key>` (create one with
`stillhouse keys create --owner NAME`), except `/v2/health/live` and `/v2/health/ready`.
Errors on `/api/v1` are RFC 9457 `application/problem+json`.
"""


def create_app() -> FastAPI:
    app = FastAPI(
        title="Stillhouse",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Submit and follow training jobs."},
            {"name": "operations", "description": "Health and metrics."},
        ],
    )
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(health.router)

    @app.middleware("http")
    async def _timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        HTTP_LATENCY.labels(request.method, template, str(response.status_code)).observe(
            time.perf_counter() - start
        )
        return response

    return app


app = create_app()
