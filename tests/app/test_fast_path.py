"""The prediction fast path (app/api/fast_path.py) answers exactly what the full stack
answers: same status, headers that matter, body, for good and bad requests alike."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from app.api.fast_path import V1_TEMPLATE, V2_TEMPLATE, fast_route
from app.serving.predict import K_DEFAULT
from tests.app.serving import factory
from tests.app.serving.factory import install_model

student_folder = factory.student_folder


def scope(path: str, query: bytes = b"", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(
    ("path", "query", "method", "template"),
    [
        ("/api/v1/models/abc/predict", b"", "POST", V1_TEMPLATE),
        ("/api/v1/models/abc/predict", b"k=5", "POST", V1_TEMPLATE),
        ("/api/v1/models/abc/predict", b"k=1000", "POST", V1_TEMPLATE),
        ("/v2/models/abc/infer", b"", "POST", V2_TEMPLATE),
        ("/v2/models/abc/versions/1/infer", b"", "POST", "version"),
        # Everything else goes to the ordinary stack, which validates and answers.
        ("/api/v1/models/abc/predict", b"k=0", "POST", None),
        ("/api/v1/models/abc/predict", b"k=1001", "POST", None),
        ("/api/v1/models/abc/predict", b"k=2&x=1", "POST", None),
        ("/api/v1/models/abc/predict", b"k=two", "POST", None),
        ("/api/v1/models/abc/predict", b"", "GET", None),
        ("/api/v1/models/a:b/predict", b"", "POST", None),
        ("/api/v1/models/a/b/predict", b"", "POST", None),
        ("/api/v1/models/abc", b"", "POST", None),
        ("/api/v1/jobs", b"", "POST", None),
    ],
)
def test_fast_route_takes_only_what_it_reads_at_a_glance(path, query, method, template):
    route = fast_route(scope(path, query, method))
    if template is None:
        assert route is None
    elif template == "version":
        assert route is not None and route[0].path_format.endswith("/versions/{version}/infer")
    else:
        assert route is not None and route[0] is template
    assert K_DEFAULT == 3


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def requests_to_compare(model_id: str, key: dict[str, str]) -> list[tuple[str, str, dict]]:
    x = np.random.default_rng(1).random((2, 1, 8, 8)).astype(np.float32)
    v1 = f"/api/v1/models/{model_id}/predict"
    v2 = f"/v2/models/{model_id}/infer"
    infer = {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                         "data": x.ravel().tolist()}]}  # fmt: skip
    npy_headers = {**key, "Content-Type": "application/x-npy"}
    return [
        ("good JSON", v1, {"json": {"inputs": x.tolist()}, "headers": key}),
        ("good JSON, k", v1 + "?k=1", {"json": {"inputs": x.tolist()}, "headers": key}),
        ("k out of range", v1 + "?k=0", {"json": {"inputs": x.tolist()}, "headers": key}),
        ("good npy", v1, {"content": npy(x), "headers": npy_headers}),
        ("npy of strings", v1, {"content": npy(np.array(["a"])), "headers": npy_headers}),
        ("bad JSON", v1, {"content": b"{", "headers": {**key, "Content-Type": "application/json"}}),
        ("ragged", v1, {"json": {"inputs": [[[0.1]], [[0.1, 0.2]]]}, "headers": key}),
        ("off scale", v1, {"json": {"inputs": (x * 255).tolist()}, "headers": key}),
        ("no key", v1, {"json": {"inputs": x.tolist()}}),
        ("wrong key", v1, {"json": {"inputs": x.tolist()}, "headers": {"Authorization": "Bearer no"}}),
        ("no model", "/api/v1/models/nope/predict", {"json": {"inputs": x.tolist()}, "headers": key}),
        ("text body", v1, {"content": b"x", "headers": {**key, "Content-Type": "text/plain"}}),
        ("V2 good", v2, {"json": infer, "headers": key}),
        ("V2 bad shape", v2, {"json": {"inputs": [{**infer["inputs"][0], "shape": [2, 8, 8]}]},
                              "headers": key}),
        ("V2 version 2", f"/v2/models/{model_id}/versions/2/infer", {"json": infer, "headers": key}),
        ("V2 no model", "/v2/models/nope/infer", {"json": infer, "headers": key}),
    ]  # fmt: skip


def test_fast_and_full_stack_answer_alike(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    app = client.app
    for name, url, kwargs in requests_to_compare(model_id, alice):
        answers = []
        for fast in (True, False):
            app.fast_path = fast
            try:
                r = client.post(url, **kwargs)
            finally:
                app.fast_path = True
            answers.append(
                (
                    r.status_code,
                    r.headers.get("content-type"),
                    r.headers.get("www-authenticate"),
                    r.content,
                )
            )
        assert answers[0] == answers[1], (name, answers)
        assert answers[0][0] < 500, (name, answers[0])


def test_fast_path_records_the_route_latency(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    x = np.zeros((1, 1, 8, 8)).tolist()
    assert client.post(f"/api/v1/models/{model_id}/predict", json={"inputs": x}, headers=alice)
    assert client.post("/api/v1/models/nope/predict", json={"inputs": x}, headers=alice)
    text = client.get("/metrics").text
    route = 'route="/api/v1/models/{model_id}/predict"'
    for status in ("200", "404"):
        assert any(
            line.startswith("stillhouse_http_request_duration_seconds_count")
            and route in line
            and f'status="{status}"' in line
            for line in text.splitlines()
        ), status
