"""The OpenAPI document explains itself: every operation says what it does and shows an
example, every property of every component schema says what it means, and every example
fits the schema beside it.

The document is generated in-process from `app.main.app`, as /openapi.json serves it
(app/api/openapi.py's corrections included); no database is needed.
tests/e2e/test_openapi.py checks the same document against the running API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.main import app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def media_types(operation: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, media type, media type object) of the request body and every answer."""
    for media, body in operation.get("requestBody", {}).get("content", {}).items():
        yield "request", media, body
    for status, answer in operation.get("responses", {}).items():
        for media, body in (answer.get("content") or {}).items():
            yield status, media, body


def examples_of(body: dict[str, Any]) -> list[Any]:
    found = [body["example"]] if body.get("example") is not None else []
    return found + [e["value"] for e in (body.get("examples") or {}).values() if "value" in e]


def test_every_operation_has_a_description(document: dict[str, Any]):
    missing = [where for where, op in operations(document) if not op.get("description")]
    assert missing == []
    for where, op in operations(document):
        # A few sentences, not the summary again.
        assert op["description"] != op.get("summary"), where
        assert len(op["description"].split()) >= 12, where


def test_every_operation_has_an_example(document: dict[str, Any]):
    missing = [
        where
        for where, op in operations(document)
        if not any(examples_of(body) for _, _, body in media_types(op))
    ]
    assert missing == []


def test_every_schema_property_has_a_description(document: dict[str, Any]):
    missing = [
        f"{name}.{prop}"
        for name, schema in document["components"]["schemas"].items()
        for prop, property_schema in (schema.get("properties") or {}).items()
        if not property_schema.get("description")
    ]
    assert missing == []


def test_every_example_fits_its_schema(document: dict[str, Any]):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis's validator
    wrong = []
    for where, op in operations(document):
        for status, media, body in media_types(op):
            if "schema" not in body:
                continue
            # `$ref`s point into the document's components.
            schema = {**body["schema"], "components": document["components"]}
            validator = jsonschema_rs.validator_for(schema)
            for value in examples_of(body):
                wrong += [
                    f"{where} {status} {media}: {error.message}"
                    for error in validator.iter_errors(value)
                ]
    assert wrong == []
