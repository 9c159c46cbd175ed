"""The error answers each route documents in OpenAPI, from one table.

`problems(401, 404, 422, what="dataset")` documents problem+json answers for /api/v1
routes; `oip_errors(...)` the `{"error": "..."}` answers of /v2. `custom` replaces the
standard description of a status where a route says more.
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
    statuses: tuple[int, ...], what: str, custom: dict[int, str] | None, content: dict[str, Any]
) -> dict[int | str, dict[str, Any]]:
    described = {s: STANDARD[s].format(what=what) for s in statuses}
    described.update(custom or {})
    return {status: {"description": text, **content} for status, text in described.items()}


def problems(
    *statuses: int, what: str = "resource", custom: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for problem+json answers with these statuses."""
    return _answers(statuses, what, custom, PROBLEM_CONTENT)


def oip_errors(
    *statuses: int, what: str = "model", custom: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the Open Inference Protocol's `{"error"}` answers."""
    return _answers(statuses, what, custom, OIP_ERROR_CONTENT)
