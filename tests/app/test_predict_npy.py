"""POST /predict with a raw `.npy` body (application/x-npy): the same answers as JSON,
and every malformed array refused by name, never unpickled."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.app.serving import factory
from tests.app.serving.factory import install_model
from tests.app.test_predict import assert_problem

student_folder = factory.student_folder
colour_folder = factory.colour_folder
NPY = "application/x-npy"


def npy(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def crafted(shape: str, data_bytes: int) -> bytes:
    """A .npy body whose header says `shape` (float32), with `data_bytes` of data."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header = header.ljust(118) + "\n"
    return (
        b"\x93NUMPY\x01\x00"
        + len(header).to_bytes(2, "little")
        + header.encode()
        + (b"\x00" * data_bytes)
    )


def post(client, headers, model_id, body: bytes, params=None):
    return client.post(
        f"/api/v1/models/{model_id}/predict",
        content=body,
        params=params,
        headers={**headers, "Content-Type": NPY},
    )


@pytest.fixture
def grey(client, alice, student_folder) -> str:
    return install_model(student_folder, owner="alice")


def test_npy_answers_what_json_answers(client, alice, grey):
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    by_json = client.post(
        f"/api/v1/models/{grey}/predict", json={"inputs": x.tolist()}, headers=alice
    )
    assert by_json.status_code == 200
    for array in (x, x.astype(np.float64), np.asfortranarray(x), x[:, 0]):
        r = post(client, alice, grey, npy(array))
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == [
            p["label"] for p in by_json.json()["predictions"]
        ]
        got = [p["score"] for p in r.json()["predictions"]]
        want = [p["score"] for p in by_json.json()["predictions"]]
        assert np.allclose(got, want, atol=1e-6)


def test_arrays_are_on_the_model_scale_whatever_their_dtype(client, alice, grey):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 1, 8, 8)).astype(np.uint8)
    # 0-255 pixels for this 0-1 model: refused with the way to fix them, as JSON is.
    problem = assert_problem(post(client, alice, grey, npy(pixels)), 422, "body")
    assert "uint8" in problem["detail"] and "0-1" in problem["detail"]
    r = post(client, alice, grey, npy(pixels.astype(np.float32) / 255))
    assert r.status_code == 200, r.text
    same = client.post(
        f"/api/v1/models/{grey}/predict",
        json={"inputs": pixels.astype(int).tolist(), "scale": 255},
        headers=alice,
    )
    got = [p["score"] for p in r.json()["predictions"]]
    want = [p["score"] for p in same.json()["predictions"]]
    assert np.allclose(got, want, atol=1e-6)


def test_uint8_pixels_suit_a_0_255_model_and_sizes_are_converted(client, alice, colour_folder):
    model_id = install_model(colour_folder, owner="alice")
    model = client.get(f"/api/v1/models/{model_id}", headers=alice).json()
    assert model["input"]["scale"] == 255.0
    grey_big = np.random.default_rng(2).integers(0, 256, (1, 20, 20)).astype(np.uint8)
    r = post(client, alice, model_id, npy(grey_big))
    assert r.status_code == 200, r.text
    same = client.post(
        f"/api/v1/models/{model_id}/predict",
        json={"inputs": grey_big.astype(int).tolist()},
        headers=alice,
    )
    assert r.json() == same.json()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 422, "not a .npy"),
        (b"PK\x03\x04", 422, "not a .npy"),
        (b"\x93NUMPY\x09\x00", 422, "header"),
        (npy(np.array(["a", "b"])), 422, "holds <U1"),
        (npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), 422, "holds object"),
        (npy(np.zeros((2, 8, 8)))[:-8], 422, "bytes of data"),
        (npy(np.zeros((2, 8, 8))) + b"\x00" * 8, 422, "bytes of data"),
        (npy(np.zeros((257, 8, 8), dtype=np.uint8)), 413, "at most 256"),
        (npy(np.full((1, 8, 8), np.nan, dtype=np.float32)), 422, "finite"),
        (npy(np.zeros((8, 8), dtype=np.float32)), 422, "shape"),
        (crafted("(-2, -2, 1)", 16), 422, "invalid .npy shape"),
        (crafted("(True, 1, 2, 2)", 16), 422, "invalid .npy shape"),
        (crafted("(1, 40000, 40000)", 4), 413, "pixels"),
        (npy(np.zeros((1, 2, 8, 8), dtype=np.float32)), 422, "channels"),
        (npy(np.full((1, 8, 8), 200.0, dtype=np.float32)), 422, "scale"),
    ],
)
def test_bad_arrays_are_refused_by_name(client, alice, grey, body, status, words):
    r = post(client, alice, grey, body)
    problem = assert_problem(r, status, "body")
    assert words in problem["detail"], problem["detail"]


def test_the_openapi_document_offers_npy(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/models/{model_id}/predict"]["post"]["requestBody"]
    assert NPY in body["content"]
