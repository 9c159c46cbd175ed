"""The error answers each route documents in OpenAPI, from one table.

`problems(401, 404, 422, what="dataset")` documents problem+json answers for /api/v1
routes; `oip_errors(...)` the `{"error": "..."}` answers of /v2. `custom` replaces the
standard description of a status where a route says more, and `examples` gives a
status an example body. `example(200, body)` gives a route's own answer an example, which
FastAPI merges with the schema it derives from the route's response model.
"""

from __future__ import annotations

from typing import Any

PROBLEM_CONTENT = {"model": dict, "content": {"application/problem+json": {}}}
OIP_ERROR_CONTENT = {"content": {"application/json": {"example": {"error": "message"}}}}

STANDARD = {
    400: "Malformed request body",
    401: "Missing or invalid API key",
    404: "No such {what} (or another owner's)",
    409: "The {what}'s state does not allow it now",
    413: "Larger than STILLHOUSE_MAX_UPLOAD_BYTES",
    415: "A body of a type this route does not take",
    422: "Invalid request; `errors` names each field",
    503: "The model's artifacts cannot be loaded on this server",
}


def _answers(
    statuses: tuple[int, ...],
    what: str,
    custom: dict[int, str] | None,
    content: dict[str, Any],
    examples: dict[int, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    described = {s: STANDARD[s].format(what=what) for s in statuses}
    described.update(custom or {})
    answers: dict[int | str, dict[str, Any]] = {}
    for status, text in described.items():
        answers[status] = {"description": text, **content}
        if examples and status in examples:
            answers[status]["content"] = {
                media: {**body, "example": examples[status]}
                for media, body in content["content"].items()
            }
    return answers


def problems(
    *statuses: int,
    what: str = "resource",
    custom: dict[int, str] | None = None,
    examples: dict[int, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for problem+json answers with these statuses."""
    return _answers(statuses, what, custom, PROBLEM_CONTENT, examples)


def oip_errors(
    *statuses: int, what: str = "model", custom: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the Open Inference Protocol's `{"error"}` answers."""
    return _answers(statuses, what, custom, OIP_ERROR_CONTENT)


def example(
    status: int, body: Any, media_type: str = "application/json"
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` giving the `status` answer an example body."""
    return {status: {"content": {media_type: {"example": body}}}}
