"""The FastAPI application: JSON API under /api/v1, Open Inference Protocol under /v2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api.body_limit import JsonBodyLimitMiddleware
from app.api.docs_pages import install_docs
from app.api.errors import install_error_handlers
from app.api.fast_path import fast_route, serve_fast
from app.api.openapi import install_openapi
from app.api.routes import checkpoints, datasets, health, jobs, models, plots, v2, workers
from app.config import get_settings
from app.metrics import TimingMiddleware
from app.serving.server import ModelServer
from app.ui import router as ui_router

DESCRIPTION = """
Stillhouse turns big models into small, fast, task-ready ones: submit a job spec, and a
worker trains or loads a teacher, distills it into a small student, fine-tunes the
student on your target task, reports what was gained and lost, and serves the student.

Every `/api/v1` and `/v2` route needs `Authorization: Bearer <key>` (create one with
`stillhouse keys create --owner NAME`), except `/v2/health/live` and `/v2/health/ready`.
Errors on `/api/v1` are RFC 9457 `application/problem+json`.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The model cache and batchers live as long as the app, on its event loop.
    server = ModelServer(get_settings())
    await server.start()
    app.state.model_server = server
    try:
        yield
    finally:
        await server.close()


class Stillhouse(FastAPI):
    """FastAPI, with predictions answered before its middleware stack."""

    # Off, predictions take the ordinary stack too (the tests compare the two answers).
    fast_path = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # app/api/fast_path.py says what a prediction keeps and what it skips; every
        # other request (and lifespan) goes the ordinary way.
        route = fast_route(scope) if self.fast_path else None
        if route is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await serve_fast(scope, receive, send, *route)


def create_app() -> FastAPI:
    app = Stillhouse(
        title="Stillhouse",
        # /docs and /redoc come from app/api/docs_pages.py: served whole, no CDN.
        docs_url=None,
        redoc_url=None,
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Submit and follow training jobs."},
            {"name": "datasets", "description": "Upload datasets (.npz or image folders)."},
            {"name": "checkpoints", "description": "Upload teacher weights (safetensors)."},
            {
                "name": "models",
                "description": "Finished students: list, get, delete, download, predict.",
            },
            {
                "name": "inference (V2)",
                "description": "Open Inference Protocol (KServe V2); the model name is its id.",
            },
            {"name": "operations", "description": "Health and metrics."},
        ],
    )
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    app.include_router(jobs.router)
    app.include_router(plots.router)
    app.include_router(datasets.router)
    app.include_router(checkpoints.router)
    app.include_router(models.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(ui_router)

    # The middleware added last is the outermost: timing covers the body limit's 413s.
    app.add_middleware(JsonBodyLimitMiddleware)
    app.add_middleware(TimingMiddleware)
    return app


app = create_app()
