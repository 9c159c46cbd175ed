"""The OpenAPI document, made truthful about errors.

FastAPI documents each route's declared answers, plus a 422 with its own validation-error
body in `application/json`. This API answers every error on /api/v1 as problem+json
(app/api/errors.py) and on /v2 as `{"error": "..."}`, and any route may answer 401 (a
missing or revoked key), 422 (a bad parameter or body) or 500. So, once generated, every
operation's error answers get the body they really have, and the statuses every such route
can give are added where a route did not name them. `tests/e2e/test_openapi.py` checks the
document against the running API with schemathesis.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, routing
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

PROBLEM_MEDIA_TYPE = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error, as RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string", "description": "The kind of problem, in words."},
        "status": {"type": "integer", "description": "The HTTP status code."},
        "detail": {"type": "string", "description": "What went wrong, for a person to read."},
        "instance": {"type": "string", "description": "The path of the request."},
        "errors": {
            "type": "array",
            "description": "Each field, parameter, header or file at fault.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {
                        "type": "string",
                        "description": "Where: a body field's path (train.epochs), "
                        "query.<name>, header.<name>, or file.",
                    },
                    "message": {"type": "string", "description": "What is wrong with it."},
                },
            },
        },
    },
}
OIP_ERROR_SCHEMA: dict[str, Any] = {
    "title": "InferenceError",
    "type": "object",
    "description": "An error, as the Open Inference Protocol words it.",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What went wrong."}},
}

# Statuses a route may answer whatever it declares, and why.
UNAUTHORIZED = "Missing, invalid or revoked API key"
INVALID = "Invalid request; `errors` names each field"
INTERNAL = "Internal error; the server's log has the details"
FASTAPI_VALIDATION = "Validation Error"


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = truthful_errors(declared_examples(document, app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def declared_examples(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """`document` with each answer's `example` as its route declared it: FastAPI's encoder
    drops every null-valued key inside examples (`exclude_none`), and a body whose
    fields may be null then lacks the fields its schema requires."""
    for route in routing.iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        item = document.get("paths", {}).get(route.path_format, {})
        for method in route.methods:
            answers = item.get(method.lower(), {}).get("responses", {})
            for status, declared in route.responses.items():
                for media, body in (declared.get("content") or {}).items():
                    if "example" in body and media in answers.get(str(status), {}).get(
                        "content", {}
                    ):
                        answers[str(status)]["content"][media]["example"] = body["example"]
    return document


def truthful_errors(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with every error answer's body and the always-possible statuses."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["InferenceError"] = OIP_ERROR_SCHEMA
    for path, item in document.get("paths", {}).items():
        oip = path.startswith("/v2")
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault("401", {"description": UNAUTHORIZED})
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault("422", {"description": INVALID})
            responses.setdefault("500", {"description": INTERNAL})
            for status, answer in responses.items():
                if status.isdigit() and int(status) >= 400:
                    _error_body(status, answer, oip=oip)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def _error_body(status: str, answer: dict[str, Any], *, oip: bool) -> None:
    if answer.get("description") == FASTAPI_VALIDATION:
        answer["description"] = INVALID
    # A route's own example of the body stays.
    kept = {
        key: value
        for body in (answer.get("content") or {}).values()
        for key, value in body.items()
        if key in ("example", "examples")
    }
    if oip:
        # /v2 answers its errors as `{"error"}` in application/json (OIP's rule), 400 for
        # a malformed request where /api/v1 says 422.
        answer["content"] = {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/InferenceError"},
                **kept,
            }
        }
    else:
        answer["content"] = {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}, **kept}
        }
