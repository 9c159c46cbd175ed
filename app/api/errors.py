"""RFC 9457 problem+json for every error on /api/v1 (and `{"error": ...}` on /v2).

The one place where errors become HTTP: the domain errors of services
(app.services.errors), serving's input and model errors, FastAPI's validation errors,
a route's own `ProblemError` and anything unexpected all leave as a problem document
that names the field or file at fault, with the status chosen here.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from app.schemas.job_spec import JOB_KINDS
from app.services.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    ServiceError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
    field_error,
)
from app.serving.backends import ModelUnavailableError
from app.serving.inputs import InputError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://stillhouse.dev/problems/"


class ProblemError(Exception):
    """An error answered as problem+json (or OIP's `{"error"}` on /v2)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_ or HTTPStatus(status).phrase.lower().replace(" ", "-")
        self.errors = errors
        self.headers = headers


# Status, problem type and title of each domain error; the first match in order wins.
SERVICE_ERRORS: tuple[tuple[type[ServiceError], int, str, str | None], ...] = (
    (NotFoundError, 404, "not-found", None),
    (ConflictError, 409, "conflict", None),
    (InvalidError, 422, "invalid", "Invalid request"),
    (TooLargeError, 413, "too-large", None),
    (UnauthorizedError, 401, "unauthorized", None),
    (UnavailableError, 503, "unavailable", None),
)


def problem_from(exc: ServiceError) -> ProblemError:
    """A domain error as the problem it answers."""
    for kind, status, type_, title in SERVICE_ERRORS:
        if isinstance(exc, kind):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return ProblemError(
                status, exc.detail, title=title, type_=type_, errors=exc.errors, headers=headers
            )
    return ProblemError(500, exc.detail)


def input_problem(exc: InputError) -> ProblemError:
    """A prediction input that cannot be served; its status is part of the protocol
    (OIP answers malformed tensors with 400, limits with 413)."""
    return ProblemError(
        exc.status,
        f"{exc.field} {exc.message}",
        type_="too-large" if exc.status == 413 else "invalid",
        title="Invalid input" if exc.status != 413 else None,
        errors=[field_error(exc.field, exc.message)],
    )


def _is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2")


def problem_response(request: Request, exc: ProblemError) -> JSONResponse:
    if _is_v2(request):
        return JSONResponse({"error": exc.detail}, status_code=exc.status, headers=exc.headers)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + exc.type,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if exc.errors is not None:
        body["errors"] = exc.errors
    return JSONResponse(
        body, status_code=exc.status, media_type=PROBLEM_MEDIA_TYPE, headers=exc.headers
    )


def location(loc: tuple[Any, ...], body: Any = None) -> str:
    """A pydantic error location as a field path: ("body", "train", "epochs") -> train.epochs.

    The first element says where (body, query, path, header) and is dropped for the body;
    a discriminated union adds its tag (the job kind), which is dropped too.
    """
    parts = list(loc)
    prefix = ""
    if parts and parts[0] in ("query", "path", "header", "cookie"):
        prefix = f"{parts.pop(0)}."
    elif parts and parts[0] == "body":
        parts.pop(0)
        if parts and isinstance(body, dict) and parts[0] == body.get("kind"):
            parts.pop(0)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return prefix + (out or "body")


def validation_errors(errors: list[dict[str, Any]], body: Any = None) -> list[dict[str, str]]:
    out = []
    for err in errors:
        kind = err.get("type")
        loc = tuple(err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "json_invalid":
            # FastAPI puts the character offset where a field name would go.
            loc = loc[:1]
            ctx = err.get("ctx") or {}
            offset = err.get("loc", (None, None))[-1]
            message = f"not valid JSON: {ctx.get('error', 'decode error')} at character {offset}"
        field = location(loc, body)
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            # The field at fault is the discriminator (the job's `kind`), not the whole body.
            ctx = err.get("ctx") or {}
            tag = str(ctx.get("discriminator", "")).strip("'\"")
            if tag:
                field = tag if field == "body" else f"{field}.{tag}"
            if kind == "union_tag_not_found" and tag == "kind":
                # pydantic says "Unable to extract tag using discriminator": say what to send.
                message = f"missing: give kind, one of {', '.join(JOB_KINDS)}"
        out.append(field_error(field, message))
    return out


# Methods a 405's Allow header may list (the API declares no others; HEAD goes with GET).
METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """The methods some API route serves at the request's path. Mounts (the docs' static
    files) match every method, so they do not count."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


def problem_of(exc: Exception) -> ProblemError | None:
    """The problem a route's own error answers (a domain, input or model error, or a
    ProblemError), or None for anything else. Shared by the exception handlers below and
    the prediction fast path (app/api/fast_path.py), which runs routes without them."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, ServiceError):
        return problem_from(exc)
    if isinstance(exc, InputError):
        return input_problem(exc)
    if isinstance(exc, ModelUnavailableError):
        return ProblemError(503, str(exc), type_="model-unavailable")
    return None


def unexpected_problem(request: Request, exc: Exception) -> ProblemError:
    """A 500 for an error no handler knows; the traceback goes to the log, not the client."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ProblemError(500, "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    async def _known(request: Request, exc: Exception) -> JSONResponse:
        problem = problem_of(exc)
        assert problem is not None  # registered only for the types problem_of knows
        return problem_response(request, problem)

    for known in (ProblemError, ServiceError, InputError, ModelUnavailableError):
        app.add_exception_handler(known, _known)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()), getattr(exc, "body", None))
        return problem_response(request, problem_from(InvalidError(errors)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            # Starlette names the first matching route's methods only; a path served by
            # several routes (GET and POST /api/v1/jobs) allows all of theirs.
            allowed = allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            else:
                # No API route here: a mount (static files) refused it; they serve reads.
                headers.setdefault("Allow", "GET, HEAD")
            detail = (
                f"{request.method} is not allowed on {request.url.path}; use {headers['Allow']}"
            )
        problem = ProblemError(exc.status_code, detail, headers=headers or None)
        return problem_response(request, problem)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, unexpected_problem(request, exc))
