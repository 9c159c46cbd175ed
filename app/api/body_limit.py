"""A bound on the JSON bodies of /api/v1/jobs (job specs), as plain ASGI middleware.

FastAPI reads a JSON body whole before any route code runs, so a route cannot refuse a
1 GB "job spec" before it sits in memory. This middleware reads the body first, at most
`max_spec_bytes` of it, and answers 413 problem+json past that; a body within the bound is
replayed to the app unchanged. Uploads and predictions have bounds of their own
(`max_upload_bytes`), enforced as they stream.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app.api.errors import ProblemError, field_error, problem_response
from app.config import get_settings

# Routes whose bodies are job specs (and the cancel action, whose body is ignored).
BOUNDED_PREFIX = "/api/v1/jobs"


class JsonBodyLimitMiddleware:
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
        limit = get_settings().max_spec_bytes
        problem = declared_too_large(scope, limit)
        chunks: list[bytes] = []
        if problem is None:
            seen = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > limit:
                    problem = too_large(limit)
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if problem is not None:
            response = problem_response(Request(scope), problem)
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                # After the body, the app may wait for a disconnect (streaming answers).
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"body: a job spec may take at most {limit} bytes (STILLHOUSE_MAX_SPEC_BYTES)",
        type_="too-large",
        errors=[field_error("body", f"is larger than the limit of {limit} bytes")],
    )


def declared_too_large(scope: dict[str, Any], limit: int) -> ProblemError | None:
    """The 413 (or 400) that Content-Length already earns, before a byte is read."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return ProblemError(
                    400,
                    "Content-Length is not a number",
                    type_="bad-request",
                    errors=[field_error("header.Content-Length", "is not a number")],
                )
            return too_large(limit) if length > limit else None
    return None
