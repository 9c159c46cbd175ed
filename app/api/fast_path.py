"""The prediction routes without the framework's per-request layers.

A profile of `POST /api/v1/models/{id}/predict` under load (docs/benchmarks.md,
"Where a prediction's time goes") found two thirds of the API process's time in the
layers every request crosses: Starlette's and FastAPI's middleware (error, telemetry,
body limit, exception, exit stack), route matching across every router, dependency
resolution and parameter validation, not in the prediction itself. Those layers earn
their keep on the other routes; a prediction needs none of them: its one parameter is
`k`, its body is read by its own bounded reader, and its errors are the same few types.

So the app (`Stillhouse.__call__` in app/main.py) sends a prediction here before any
layer of the stack: `fast_route` recognises it and `serve_fast` answers it. A POST to a prediction path (V1 `/predict`, V2 `/infer`) calls the very
route function the router would call, with a plain `Request`, turns its errors into the
same answers the exception handlers give (app.api.errors.problem_of), and records the
same HTTP latency metric. Anything else, and a prediction whose query string it does not
read at a glance (`k` out of range, other parameters), goes down the ordinary stack, so
that validation messages come from one place. The routes stay in the OpenAPI document.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.api.errors import problem_of, problem_response, unexpected_problem
from app.api.routes import models, v2
from app.metrics import HTTP_LATENCY
from app.serving.predict import K_DEFAULT, K_MAX

Scope = dict[str, Any]

# The `id` convertor's pattern (app/api/routes/__init__.py): no `/` and no `:`.
_ID = r"[^/:]+"
_V1 = re.compile(rf"/api/v1/models/({_ID})/predict")
_V2 = re.compile(rf"/v2/models/({_ID})/infer")
_V2_VERSION = re.compile(rf"/v2/models/({_ID})/versions/([^/]+)/infer")
# `k` as the route declares it (app/serving/predict.py: 1 to K_MAX, default K_DEFAULT).
_K = re.compile(rb"k=([0-9]{1,%d})" % len(str(K_MAX)))


class _Template:
    """What the timing metric reads of a route: its path template."""

    __slots__ = ("path_format",)

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


V1_TEMPLATE = _Template("/api/v1/models/{model_id}/predict")
V2_TEMPLATE = _Template("/v2/models/{model_id}/infer")
V2_VERSION_TEMPLATE = _Template("/v2/models/{model_id}/versions/{version}/infer")


def _k(query: bytes) -> int | None:
    """`k` from a query string that holds nothing else, or None (then the router's
    validation answers)."""
    if not query:
        return K_DEFAULT
    match = _K.fullmatch(query)
    if match is None:
        return None
    k = int(match.group(1))
    return k if 1 <= k <= K_MAX else None


def _headers(request: Request) -> tuple[str | None, str | None]:
    """V2's two optional headers, as the route's Header parameters receive them."""
    headers = request.headers
    return headers.get("inference-header-content-length"), headers.get("content-encoding")


Handler = Callable[[Request], Awaitable[Response]]


def fast_route(scope: Scope) -> tuple[_Template, Handler] | None:
    """The prediction route a request is for (its template and a call of its function),
    or None: then the ordinary stack serves it."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path.startswith("/api/v1/models/"):
        match = _V1.fullmatch(path)
        if match is None:
            return None
        k = _k(scope["query_string"])
        if k is None:
            return None
        model_id = match.group(1)
        return V1_TEMPLATE, lambda request: models.predict(model_id, request, k)
    if path.startswith("/v2/models/"):
        match = _V2.fullmatch(path)
        if match is not None:
            model_id = match.group(1)
            return V2_TEMPLATE, lambda request: v2.infer(model_id, request, *_headers(request))
        match = _V2_VERSION.fullmatch(path)
        if match is not None:
            model_id, version = match.groups()
            return V2_VERSION_TEMPLATE, lambda request: v2.infer_version(
                model_id, version, request, *_headers(request)
            )
    return None


async def serve_fast(
    scope: Scope, receive: Any, send: Any, template: _Template, handler: Handler
) -> None:
    """Run the route function and answer as the full stack would: its response, or its
    error as the exception handlers render it; the HTTP latency metric either way."""
    start = time.perf_counter()
    scope["route"] = template
    request = Request(scope, receive)
    try:
        response = await handler(request)
    except ClientDisconnect:
        return  # nobody is left to answer
    except Exception as exc:
        problem = problem_of(exc) or unexpected_problem(request, exc)
        response = problem_response(request, problem)
    await response(scope, receive, send)
    HTTP_LATENCY.labels("POST", template.path_format, str(response.status_code)).observe(
        time.perf_counter() - start
    )
