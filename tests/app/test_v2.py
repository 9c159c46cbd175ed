"""Open Inference Protocol (V2) driven by the real tritonclient over a real socket.

The app runs under uvicorn on a free port (tritonclient needs one); answers must agree
with /api/v1/predict, with ONNX Runtime on the model's own model.onnx, and with PyTorch.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as triton
from safetensors.torch import load_file
from tritonclient.utils import InferenceServerException

from app.core.network import NetworkConfig, build_network
from tests.app.serving import factory
from tests.app.serving.factory import install_model
from tests.helpers import free_port

student_folder = factory.student_folder


@pytest.fixture
def server(env) -> Iterator[str]:
    """host:port of the app under uvicorn, in a thread of this process."""
    import uvicorn

    from app.main import app

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def model_id(env, alice, student_folder) -> str:
    return install_model(student_folder, owner="alice")


def torch_logits(folder, x: np.ndarray) -> np.ndarray:
    meta = json.loads((folder / "model.json").read_text())
    net = build_network(NetworkConfig.from_json(meta["network"]))
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.inference_mode():
        return net.eval()(torch.from_numpy(x)).numpy()


def onnx_logits(folder, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def infer_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_tritonclient_json_agrees_with_v1_onnx_and_torch(server, alice, model_id, student_folder):
    client = triton.InferenceServerClient(url=server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(model_id, headers=alice)
    meta = client.get_model_metadata(model_id, headers=alice)
    assert meta["name"] == model_id
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 3]}
    server_meta = client.get_server_metadata(headers=alice)
    assert server_meta["name"] == "stillhouse"

    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    result = client.infer(
        model_id,
        [infer_input(x, binary=False)],
        outputs=[
            triton.InferRequestedOutput("logits", binary_data=False),
            triton.InferRequestedOutput("probabilities", binary_data=False),
        ],
        headers=alice,
        request_id="req-1",
    )
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == model_id
    assert all("data" in o for o in response["outputs"])  # plain JSON, no binary
    logits = result.as_numpy("logits")
    probs = result.as_numpy("probabilities")
    assert logits.dtype == np.float32 and logits.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    np.testing.assert_allclose(logits, onnx_logits(student_folder, x), atol=1e-4)
    np.testing.assert_allclose(logits, torch_logits(student_folder, x), atol=1e-4)
    r = httpx.post(
        f"http://{server}/api/v1/models/{model_id}/predict",
        json={"inputs": x.tolist()},
        headers=alice,
    )
    assert r.status_code == 200, r.text
    v1 = r.json()["predictions"]
    assert [p["index"] for p in v1] == list(np.argmax(logits, axis=1))
    np.testing.assert_allclose([p["score"] for p in v1], probs.max(axis=1), atol=1e-5)


def test_binary_tensors_versions_compression_and_requested_outputs(server, alice, model_id):
    client = triton.InferenceServerClient(url=server)
    x = np.random.default_rng(1).random((3, 1, 8, 8)).astype(np.float32)
    plain = client.infer(
        model_id,
        [infer_input(x, binary=False)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=False)],
        headers=alice,
    )
    expected = plain.as_numpy("logits")
    assert plain.as_numpy("probabilities") is None  # only what was asked for

    binary = client.infer(model_id, [infer_input(x, binary=True)], headers=alice)
    # No outputs named: both come back, binary as tritonclient asks by default.
    np.testing.assert_array_equal(binary.as_numpy("logits"), expected)
    assert binary.as_numpy("probabilities").shape == (3, 3)
    assert all("parameters" in o for o in binary.get_response()["outputs"])

    versioned = client.infer(
        model_id,
        [infer_input(x, binary=True)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)],
        model_version="1",
        headers=alice,
        request_compression_algorithm="gzip",
    )
    assert versioned.as_numpy("logits") is None
    np.testing.assert_allclose(versioned.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)
    assert client.is_model_ready(model_id, model_version="1", headers=alice)
    with pytest.raises(InferenceServerException, match="version"):
        client.get_model_metadata(model_id, model_version="2", headers=alice)


def test_another_owners_model_and_missing_keys(server, alice, bob, model_id):
    client = triton.InferenceServerClient(url=server)
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata(model_id, headers=bob)
    assert not client.is_model_ready(model_id, headers=bob)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer(model_id, [infer_input(x, binary=False)], headers=bob)

    base = f"http://{server}/v2"
    for method, path in (
        ("GET", ""),
        ("GET", f"/models/{model_id}"),
        ("GET", f"/models/{model_id}/ready"),
        ("POST", f"/models/{model_id}/infer"),
    ):
        r = httpx.request(method, base + path, json={})
        assert r.status_code == 401, (path, r.text)
        assert set(r.json()) == {"error"}
        r = httpx.request(method, base + path.replace(model_id, "nope"), headers=bob, json={})
        if path:
            assert r.status_code == 404 and set(r.json()) == {"error"}, (path, r.text)
    for path in ("/health/live", "/health/ready"):
        assert httpx.get(base + path).status_code == 200


def good_request(n: int = 1) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": [n, 1, 8, 8], "datatype": "FP32", "data": [0.5] * (64 * n)}
        ]
    }


def wrong_requests() -> list[tuple[str, object, int, str]]:
    """(what, body, status, words the error must contain)."""

    def edit(fn) -> dict:
        body = good_request()
        fn(body)
        return body

    tensor = lambda b: b["inputs"][0]  # noqa: E731
    return [
        ("not JSON", b"{inputs", 400, "JSON"),
        ("a list", [1], 400, "object"),
        ("no inputs", {}, 400, "inputs"),
        ("two inputs", edit(lambda b: b["inputs"].append(tensor(b))), 400, "one"),
        ("input not an object", {"inputs": [5]}, 400, "inputs[0]"),
        ("wrong name", edit(lambda b: tensor(b).update(name="x")), 400, "'input'"),
        ("INT64", edit(lambda b: tensor(b).update(datatype="INT64")), 400, "FP32"),
        ("BYTES", edit(lambda b: tensor(b).update(datatype="BYTES")), 400, "FP32"),
        ("no shape", edit(lambda b: tensor(b).pop("shape")), 400, "shape"),
        ("shape of strings", edit(lambda b: tensor(b).update(shape=["1", 1, 8, 8])), 400, "shape"),
        ("negative shape", edit(lambda b: tensor(b).update(shape=[-1, 1, 8, 8])), 400, "shape"),
        ("3-d shape", edit(lambda b: tensor(b).update(shape=[1, 8, 8])), 400, "[N, 1, 8, 8]"),
        ("wrong size", edit(lambda b: tensor(b).update(shape=[1, 1, 9, 8])), 400, "[N, 1, 8, 8]"),
        (
            "wrong channels",
            edit(lambda b: tensor(b).update(shape=[1, 3, 8, 8])),
            400,
            "[N, 1, 8, 8]",
        ),
        ("batch 0", edit(lambda b: tensor(b).update(shape=[0, 1, 8, 8], data=[])), 400, "batch"),
        ("too little data", edit(lambda b: tensor(b).update(data=[0.5] * 63)), 400, "64"),
        ("too much data", edit(lambda b: tensor(b).update(data=[0.5] * 65)), 400, "64"),
        ("no data", edit(lambda b: tensor(b).pop("data")), 400, "data"),
        ("string data", edit(lambda b: tensor(b)["data"].__setitem__(3, "x")), 400, "data[3]"),
        ("null data", edit(lambda b: tensor(b)["data"].__setitem__(0, None)), 400, "data[0]"),
        (
            "NaN",
            b'{"inputs": [{"name": "input", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [NaN]}]}',
            400,
            "[N, 1, 8, 8]",
        ),
        (
            "NaN data",
            json.dumps(edit(lambda b: tensor(b)["data"].__setitem__(5, float("nan")))).encode(),
            400,
            "finite",
        ),
        ("data an object", edit(lambda b: tensor(b).update(data={"a": 1})), 400, "data"),
        ("unknown output", edit(lambda b: b.update(outputs=[{"name": "feats"}])), 400, "logits"),
        (
            "twice the same output",
            edit(lambda b: b.update(outputs=[{"name": "logits"}] * 2)),
            400,
            "twice",
        ),
        (
            "classification",
            edit(
                lambda b: b.update(
                    outputs=[{"name": "logits", "parameters": {"classification": 2}}]
                )
            ),
            400,
            "classification",
        ),
        ("batch past the limit", good_request(300), 413, "256"),
    ]


def test_malformed_requests_answer_4xx_with_an_error(server, alice, model_id):
    url = f"http://{server}/v2/models/{model_id}/infer"
    with httpx.Client(headers=alice, timeout=30) as http:
        for what, body, status, words in wrong_requests():
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post(url, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (what, r.text)
            error = r.json()
            assert set(error) == {"error"}, (what, error)
            assert words in error["error"], (what, error)

        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        blob = np.zeros(64, "<f4").tobytes()
        for what, content, length, words in (
            ("short binary", header + blob[:-4], len(header), "binary"),
            ("long binary", header + blob + b"\0\0\0\0", len(header), "binary"),
            ("header past the body", header + blob, len(header) + 10_000, "Inference-Header"),
            ("header length not a number", header + blob, "abc", "Inference-Header"),
            ("binary NaN", header + np.full(64, np.nan, "<f4").tobytes(), len(header), "NaN"),
        ):
            r = http.post(
                url,
                content=content,
                headers={"Inference-Header-Content-Length": str(length)},
            )
            assert r.status_code == 400, (what, r.text)
            assert words in r.json()["error"], (what, r.text)
        r = http.post(
            url,
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        r = http.post(url, content=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["error"]
        r = http.post(url, content=b"{}", headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and "br" in r.json()["error"]
        gz = gzip.compress(json.dumps(good_request()).encode())
        r = http.post(url, content=gz, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
