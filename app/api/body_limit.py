"""Bounded request bodies: every body the API reads goes through one limiter.

A body over its bound answers 413 problem+json naming the setting that sets it: refused
on its `Content-Length` before a byte is read, or, without one (chunked) or when it lies,
as soon as the bytes read pass the bound. The bounds:

- job specs (`POST /api/v1/jobs...`): `STILLHOUSE_MAX_SPEC_BYTES`, enforced by
  `JsonBodyLimitMiddleware` below, because FastAPI reads a JSON body whole before any
  route code runs;
- uploads and predictions: `STILLHOUSE_MAX_UPLOAD_BYTES`, enforced as they stream
  (app/api/uploads.py, the prediction routes).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from app.api.errors import ProblemError, problem_response
from app.config import get_settings
from app.services.errors import field_error

# Routes whose bodies are job specs (and the cancel action, whose body is ignored).
BOUNDED_PREFIX = "/api/v1/jobs"


@dataclass(frozen=True)
class BodyLimit:
    """A bound on a body: at most `limit` bytes. Its 413 says `detail` and names `field`
    with `message` (both formatted with the limit)."""

    limit: int
    detail: str
    field: str = "body"
    message: str = "is larger than the limit of {limit} bytes"
    # Bytes a body may carry beyond `limit` before it is refused unread (a multipart
    # body's boundaries and small form fields around the bounded file part).
    slack: int = 0

    def too_large(self) -> ProblemError:
        return ProblemError(
            413,
            self.detail.format(limit=self.limit),
            type_="too-large",
            errors=[field_error(self.field, self.message.format(limit=self.limit))],
        )


def spec_limit() -> BodyLimit:
    """Job specs: STILLHOUSE_MAX_SPEC_BYTES."""
    return BodyLimit(
        get_settings().max_spec_bytes,
        "body: a job spec may take at most {limit} bytes (STILLHOUSE_MAX_SPEC_BYTES)",
    )


def upload_limit(*, slack: int = 0) -> BodyLimit:
    """An uploaded file (a dataset or a checkpoint): STILLHOUSE_MAX_UPLOAD_BYTES."""
    return BodyLimit(
        get_settings().max_upload_bytes,
        "the upload is larger than the limit of {limit} bytes (STILLHOUSE_MAX_UPLOAD_BYTES)",
        field="file",
        message="larger than {limit} bytes",
        slack=slack,
    )


def prediction_limit() -> BodyLimit:
    """A prediction's body (JSON, multipart images, V2 tensors): STILLHOUSE_MAX_UPLOAD_BYTES."""
    return BodyLimit(
        get_settings().max_upload_bytes, "body is larger than the limit of {limit} bytes"
    )


def check_declared(headers: Headers, bound: BodyLimit) -> None:
    """413 at once when Content-Length already says the body is too large; 400 when it
    is not a number."""
    raw = headers.get("content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError:
        raise ProblemError(
            400,
            "header.Content-Length is not a number",
            type_="bad-request",
            errors=[field_error("header.Content-Length", "is not a number")],
        ) from None
    if length > bound.limit + bound.slack:
        raise bound.too_large()


async def limited_stream(request: Request, bound: BodyLimit) -> AsyncIterator[bytes]:
    """The body's chunks; 413 as soon as they add up to more than the bound."""
    check_declared(request.headers, bound)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > bound.limit + bound.slack:
            raise bound.too_large()
        yield chunk


async def read_body(request: Request, bound: BodyLimit) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, bound)])


def decode_content(body: bytes, encoding: str | None, bound: BodyLimit) -> bytes:
    """Undo a request's Content-Encoding (gzip or deflate, as tritonclient sends them),
    never inflating past the bound."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise ProblemError(
            415,
            f"header.Content-Encoding {encoding!r} is not supported (gzip, deflate)",
            type_="unsupported-media-type",
            errors=[field_error("header.Content-Encoding", "is not gzip or deflate")],
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, bound.limit + 1)
    except zlib.error as exc:
        raise ProblemError(
            400,
            f"body is not valid {encoding} data ({exc})",
            type_="bad-request",
            errors=[field_error("body", f"is not valid {encoding} data")],
        ) from None
    if len(out) > bound.limit or inflater.unconsumed_tail:
        raise bound.too_large()
    return out


class JsonBodyLimitMiddleware:
    """Reads a job spec's body first, at most `max_spec_bytes` of it, and answers 413
    past that; a body within the bound is replayed to the app unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH")
            or not scope["path"].startswith(BOUNDED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        bound = spec_limit()
        request = Request(scope, receive)
        try:
            body = await read_body(request, bound)
        except ClientDisconnect:
            return
        except ProblemError as problem:
            response = problem_response(request, problem)
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                # After the body, the app may wait for a disconnect (streaming answers).
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
