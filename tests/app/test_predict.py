"""POST /api/v1/models/{id}/predict: JSON tensors and image files, right and wrong.

Every malformed input a client can send answers 4xx naming the field or file, never 500;
good inputs answer what the model itself computes.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from app.config import get_settings
from app.core.network import NetworkConfig, build_network
from tests.app.serving import factory
from tests.app.serving.factory import install_model

student_folder = factory.student_folder
colour_folder = factory.colour_folder

PROBLEM = "application/problem+json"


def reference_probs(folder, x: np.ndarray) -> np.ndarray:
    """What the model computes: the Network rebuilt by hand, softmax of its logits."""
    meta = json.loads((folder / "model.json").read_text())
    net = build_network(NetworkConfig.from_json(meta["network"]))
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.inference_mode():
        return torch.softmax(net.eval()(torch.from_numpy(x).float()), dim=1).numpy()


def predict(client, headers, model_id, **kwargs):
    return client.post(f"/api/v1/models/{model_id}/predict", headers=headers, **kwargs)


def assert_problem(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert any(f.startswith(field) for f in fields), (field, body)
    return body


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def grey(client, alice, student_folder) -> str:
    return install_model(student_folder, owner="alice")


@pytest.fixture
def colour(client, alice, colour_folder) -> str:
    return install_model(colour_folder, owner="alice")


# ------------------------------------------------------------------------------ JSON
def test_json_predictions_match_the_model(client, alice, grey, student_folder):
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    r = predict(client, alice, grey, json={"inputs": x.tolist()}, params={"k": 2})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = reference_probs(student_folder, x)
    assert len(preds) == 4
    for p, probs in zip(preds, expected, strict=True):
        assert p["index"] == int(np.argmax(probs))
        assert p["label"] == ["0", "1", "2"][p["index"]]
        assert p["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert len(p["top_k"]) == 2
        assert p["top_k"][0] == {"label": p["label"], "score": p["score"]}
        assert p["top_k"][0]["score"] >= p["top_k"][1]["score"]


def test_inputs_off_the_model_scale_are_refused_unless_the_scale_is_said(client, alice, grey):
    x = np.random.default_rng(3).random((2, 1, 8, 8)).astype(np.float32)
    on_scale = predict(client, alice, grey, json={"inputs": x.tolist()}).json()
    # 0-255 pixels sent to a 0-1 model: a confident wrong label before, a 422 now.
    pixels = (x * 255).tolist()
    body = assert_problem(predict(client, alice, grey, json={"inputs": pixels}), 422, "inputs")
    assert "0-1" in body["detail"] and '"scale"' in body["detail"]
    # Saying the scale rescales them: the same answer as the 0-1 inputs.
    r = predict(client, alice, grey, json={"inputs": pixels, "scale": 255})
    assert r.status_code == 200, r.text
    assert [p["index"] for p in r.json()["predictions"]] == [
        p["index"] for p in on_scale["predictions"]
    ]
    assert_problem(predict(client, alice, grey, json={"inputs": pixels, "scale": 0}), 422, "scale")
    # A said scale is checked too: 0-255 values said to be on 0-1 are not rescaled blindly.
    body = assert_problem(
        predict(client, alice, grey, json={"inputs": pixels, "scale": 1}), 422, "inputs"
    )
    assert 'the 0-1 that "scale" says' in body["detail"]
    negative = (x - 0.5).tolist()
    assert_problem(predict(client, alice, grey, json={"inputs": negative}), 422, "inputs")


def test_an_id_of_another_kind_says_what_it_is(client, alice, grey):
    from tests.helpers import tiny_train_spec

    job = client.post("/api/v1/jobs", json=tiny_train_spec(), headers=alice).json()
    body = assert_problem(client.get(f"/api/v1/models/{job['id']}", headers=alice), 404)
    assert body["detail"].endswith("this is a job id; it has no model yet (QUEUED)")
    r = predict(client, alice, job["id"], json={"inputs": [[[0.0]]]})
    assert "this is a job id" in assert_problem(r, 404)["detail"]
    body = assert_problem(client.get(f"/api/v1/jobs/{grey}", headers=alice), 404)
    assert "this is a model id" in body["detail"]
    v2 = client.get(f"/v2/models/{job['id']}", headers=alice)
    assert v2.status_code == 404 and "this is a job id" in v2.json()["error"]
    # The hint follows the job: once it ends without a model, it says so.
    assert client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice).status_code == 202
    body = assert_problem(client.get(f"/api/v1/models/{job['id']}", headers=alice), 404)
    assert body["detail"].endswith("this is a job id; it ended CANCELLED without a model")


def test_n_h_w_is_n_1_h_w(client, alice, grey):
    x = np.random.default_rng(1).random((2, 8, 8))
    a = predict(client, alice, grey, json={"inputs": x.tolist()}).json()
    b = predict(client, alice, grey, json={"inputs": x[:, None].tolist()}).json()
    assert a == b


def test_large_answers_are_built_off_the_event_loop(client, alice, grey, monkeypatch):
    # 256 images x k=1000 took a quarter of a second to build on the loop; past a bound
    # the answer is built in a thread, and it must be the same answer.
    from app.serving import predict as routes

    x = {"inputs": np.random.default_rng(2).random((3, 8, 8)).tolist()}
    inline = predict(client, alice, grey, json=x, params={"k": 3}).json()
    threads = []
    real = routes.run_in_threadpool

    async def spy(fn, *args, **kwargs):
        threads.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(routes, "run_in_threadpool", spy)
    monkeypatch.setattr(routes, "INLINE_ANSWER_ENTRIES", 8)
    assert predict(client, alice, grey, json=x, params={"k": 3}).json() == inline
    assert threads == ["answer"]


def test_k_is_bounded_by_the_classes_and_validated(client, alice, grey):
    x = {"inputs": [np.zeros((8, 8)).tolist()]}
    r = predict(client, alice, grey, json=x, params={"k": 50})
    assert r.status_code == 200
    top = r.json()["predictions"][0]["top_k"]
    assert sorted(t["label"] for t in top) == ["0", "1", "2"]
    assert sum(t["score"] for t in top) == pytest.approx(1.0, abs=1e-6)
    assert_problem(predict(client, alice, grey, json=x, params={"k": 0}), 422, "query.k")
    assert_problem(predict(client, alice, grey, json=x, params={"k": "two"}), 422, "query.k")


def test_other_sizes_are_resized_and_colour_becomes_grey(client, alice, grey, student_folder):
    rng = np.random.default_rng(2)
    big = rng.random((1, 1, 32, 24)).astype(np.float32)
    r = predict(client, alice, grey, json={"inputs": big.tolist()})
    assert r.status_code == 200, r.text
    small = torch.nn.functional.interpolate(
        torch.from_numpy(big), size=(8, 8), mode="bilinear", antialias=True
    ).numpy()
    assert r.json()["predictions"][0]["score"] == pytest.approx(
        float(reference_probs(student_folder, small).max()), abs=1e-4
    )
    rgb = np.repeat(rng.random((1, 1, 8, 8)), 3, axis=1)  # grey, as colour
    a = predict(client, alice, grey, json={"inputs": rgb.tolist()}).json()
    b = predict(client, alice, grey, json={"inputs": rgb[:, :1].tolist()}).json()
    for pa, pb in zip(a["predictions"], b["predictions"], strict=True):
        assert pa["index"] == pb["index"]
        assert pa["score"] == pytest.approx(pb["score"], abs=1e-4)


def test_grey_inputs_for_a_colour_model_are_repeated(client, alice, colour, colour_folder):
    g = np.random.default_rng(3).integers(0, 256, (2, 16, 16)).astype(np.float32)
    r = predict(client, alice, colour, json={"inputs": g.tolist()})
    assert r.status_code == 200, r.text
    expected = reference_probs(colour_folder, np.repeat(g[:, None], 3, axis=1))
    got = [p["score"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, expected.max(axis=1), atol=1e-4)
    assert {p["label"] for p in r.json()["predictions"]} <= set("abcd")


WRONG_JSON = [
    # (description, raw body, field named)
    ("not JSON", b"{inputs: [", "body"),
    ("a list body", b"[1, 2]", "body"),
    ("no inputs", b"{}", "inputs"),
    ("an unknown field", b'{"inputs": [[[0]]], "extra": 1}', "extra"),
    ("inputs a number", b'{"inputs": 3}', "inputs"),
    ("inputs a string", b'{"inputs": "[[1]]"}', "inputs"),
    ("inputs an object", b'{"inputs": {"a": 1}}', "inputs"),
    ("an empty batch", b'{"inputs": []}', "inputs"),
    ("a string pixel", b'{"inputs": [[[0, "1"]]]}', "inputs[0][0][1]"),
    ("a numeric string", b'{"inputs": [[["0.5"]]]}', "inputs[0][0][0]"),
    ("a boolean pixel", b'{"inputs": [[[true]]]}', "inputs[0][0][0]"),
    ("a null pixel", b'{"inputs": [[[null]]]}', "inputs[0][0][0]"),
    ("an object pixel", b'{"inputs": [[[{}]]]}', "inputs[0][0][0]"),
    ("ragged rows", b'{"inputs": [[[0, 1], [2]]]}', "inputs[0][1]"),
    ("ragged images", b'{"inputs": [[[0, 1]], [[0, 1], [2, 3]]]}', "inputs[1]"),
    ("a number where a row goes", b'{"inputs": [[[0, 1], 5]]}', "inputs[0][1]"),
    ("too deep", b'{"inputs": [[[[[0]]]]]}', "inputs"),
    ("too shallow", b'{"inputs": [[0, 1]]}', "inputs"),
    ("flat", b'{"inputs": [0, 1]}', "inputs"),
    ("NaN", b'{"inputs": [[[NaN]]]}', "inputs[0][0][0]"),
    ("Infinity", b'{"inputs": [[[0, -Infinity]]]}', "inputs[0][0][1]"),
    ("past float32", b'{"inputs": [[[1e39]]]}', "inputs[0][0][0]"),
    ("an empty row", b'{"inputs": [[[]]]}', "inputs"),
    ("an empty image", b'{"inputs": [[]]}', "inputs"),
    ("two channels", b'{"inputs": [[[[0]], [[1]]]]}', "inputs"),
    ("channels last", b'{"inputs": [[[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]]}', "inputs"),
]


def test_wrong_json_answers_422_naming_the_field(client, alice, grey):
    # One test for all cases: each case needs no fresh app or database.
    for what, body, field in WRONG_JSON:
        r = client.post(
            f"/api/v1/models/{grey}/predict",
            content=body,
            headers={**alice, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (what, r.text)
        assert_problem(r, 422, field)
    # The model still answers good requests after all that.
    r = predict(client, alice, grey, json={"inputs": [np.zeros((8, 8)).tolist()]})
    assert r.status_code == 200


def test_other_content_types_answer_415(client, alice, grey):
    r = client.post(
        f"/api/v1/models/{grey}/predict",
        content=b"0,1,2",
        headers={**alice, "Content-Type": "text/csv"},
    )
    assert_problem(r, 415, "header.Content-Type")


@pytest.fixture
def tight_limits(env, monkeypatch):
    for key, value in {
        "STILLHOUSE_PREDICT_MAX_BATCH": "4",
        "STILLHOUSE_PREDICT_MAX_PIXELS": "1024",
        "STILLHOUSE_MAX_UPLOAD_BYTES": "200000",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_limits_answer_413(tight_limits, client, alice, grey):
    r = predict(client, alice, grey, json={"inputs": np.zeros((5, 8, 8)).tolist()})
    assert "at most 4" in assert_problem(r, 413, "inputs")["detail"]
    r = predict(client, alice, grey, json={"inputs": np.zeros((1, 33, 33)).tolist()})
    assert "1024 pixels" in assert_problem(r, 413, "inputs")["detail"]
    # The body limit holds whatever the declared length says.
    r = client.post(
        f"/api/v1/models/{grey}/predict",
        content=b'{"inputs": [' + b"0," * 150_000 + b"0]}",
        headers={**alice, "Content-Type": "application/json"},
    )
    assert_problem(r, 413, "body")

    def chunks():
        yield b'{"inputs": ['
        for _ in range(100):
            yield b"0," * 2000
        yield b"0]}"

    r = client.post(
        f"/api/v1/models/{grey}/predict",
        content=chunks(),
        headers={**alice, "Content-Type": "application/json"},
    )
    assert_problem(r, 413, "body")
    files = [
        ("files", (f"{i}.png", png(np.zeros((8, 8), np.uint8)), "image/png")) for i in range(5)
    ]
    assert_problem(predict(client, alice, grey, files=files), 413, "files")
    big = [("files", ("big.png", png(np.zeros((40, 40), np.uint8)), "image/png"))]
    body = assert_problem(predict(client, alice, grey, files=big), 413, "files[0]")
    assert "big.png" in body["detail"]
    # Within the limits all is well.
    assert (
        predict(client, alice, grey, json={"inputs": np.zeros((4, 8, 8)).tolist()}).status_code
        == 200
    )


# ---------------------------------------------------------------------------- images
def test_images_of_any_mode_and_size_are_served(client, alice, grey, colour):
    rng = np.random.default_rng(4)
    images = {
        "grey.png": png(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        "rgb.png": png(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "rgba.png": png(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)),
        "grey16.png": png(rng.integers(0, 65536, (12, 12), dtype=np.uint16)),
        "photo.jpg": jpeg(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)),
        "palette.png": _palette_png(rng),
    }
    files = [
        ("files", (name, data, "image/jpeg" if name.endswith("jpg") else "image/png"))
        for name, data in images.items()
    ]
    for model_id in (grey, colour):
        r = predict(client, alice, model_id, files=files)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == len(images)


def _palette_png(rng) -> bytes:
    image = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_answers_what_its_pixels_answer_as_json(client, alice, grey, colour):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    files = [("files", ("a.png", png(pixels), "image/png"))]
    by_file = predict(client, alice, grey, files=files).json()
    # The grey model was trained on 0-1 data: pixels / 255 are its inputs.
    by_json = predict(client, alice, grey, json={"inputs": [(pixels / 255.0).tolist()]}).json()
    assert by_file["predictions"][0]["index"] == by_json["predictions"][0]["index"]
    assert by_file["predictions"][0]["score"] == pytest.approx(
        by_json["predictions"][0]["score"], abs=1e-5
    )
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    by_file = predict(client, alice, colour, files=[("files", ("c.png", png(rgb), "image/png"))])
    by_json = predict(
        client, alice, colour, json={"inputs": [rgb.transpose(2, 0, 1).astype(float).tolist()]}
    )
    assert by_file.json()["predictions"][0]["score"] == pytest.approx(
        by_json.json()["predictions"][0]["score"], abs=1e-5
    )


def test_bad_files_answer_4xx_naming_the_file(client, alice, grey):
    good = png(np.zeros((8, 8), np.uint8))
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, format="GIF")
    cases = [
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), 422),
        (
            "truncated.png",
            png(np.random.default_rng(6).integers(0, 256, (64, 64), np.uint8))[:120],
            422,
        ),
        (
            "truncated.jpg",
            jpeg(np.random.default_rng(7).integers(0, 256, (64, 64, 3), np.uint8))[:300],
            422,
        ),
        ("noise.bin", b"not an image at all", 422),
        ("empty.png", b"", 422),
        ("anim.gif", gif.getvalue(), 415),
    ]
    for name, data, status in cases:
        files = [("files", ("ok.png", good, "image/png")), ("files", (name, data, "image/png"))]
        body = assert_problem(predict(client, alice, grey, files=files), status, "files[1]")
        assert name in body["detail"], body


def test_multipart_without_images_or_with_other_fields(client, alice, grey):
    good = png(np.zeros((8, 8), np.uint8))
    r = predict(client, alice, grey, files=[("image", ("a.png", good, "image/png"))])
    assert_problem(r, 422, "image")
    r = predict(client, alice, grey, data={"files": "not a file"}, files=[("x", ("a", b"", "a/b"))])
    assert r.status_code == 422
    r = client.post(
        f"/api/v1/models/{grey}/predict",
        content=b"--xyz\r\nbroken",
        headers={**alice, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith(PROBLEM)


# -------------------------------------------------------------------------- batching
def test_concurrent_requests_with_one_malformed_are_each_answered(
    client, alice, grey, student_folder
):
    rng = np.random.default_rng(8)
    xs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(24)]
    bad_index = 7
    results: dict[int, tuple[int, dict]] = {}
    start = threading.Barrier(len(xs))

    def call(i: int) -> None:
        body = {"inputs": xs[i].tolist()}
        if i == bad_index:
            body = {"inputs": [[[0.0, float("nan")]]]}
        raw = json.dumps(body).encode()  # NaN goes out as the JSON extension `NaN`
        start.wait()
        r = client.post(
            f"/api/v1/models/{grey}/predict",
            content=raw,
            headers={**alice, "Content-Type": "application/json"},
        )
        results[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = reference_probs(student_folder, np.stack(xs))
    for i in range(len(xs)):
        status, body = results[i]
        if i == bad_index:
            assert status == 422 and "inputs[0][0][1]" in body["detail"]
            continue
        assert status == 200, body
        assert body["predictions"][0]["score"] == pytest.approx(float(expected[i].max()), abs=1e-4)
