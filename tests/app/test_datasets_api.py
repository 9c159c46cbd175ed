"""POST/GET/DELETE /api/v1/datasets on both backends: every upload format, every way an
upload can be wrong (422 naming the problem), the size limit (413), and a round trip
through the worker's reader."""

from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter
from starlette.requests import Request

from app.api.errors import ProblemError
from app.api.uploads import receive_upload
from app.config import get_settings
from app.core.datasets import holdout_mask
from app.core.datasets.stored import read_dataset
from app.db import get_write_sessionmaker
from app.schemas.job_spec import JobSpec
from app.services import datasets as datasets_service
from app.services import jobs as jobs_service
from app.services.errors import ConflictError, InvalidError, ServiceError
from app.services.spec_check import check_spec

URL = "/api/v1/datasets"


# ------------------------------------------------------------------------- helpers
def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format=fmt)
    return buf.getvalue()


def grey(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def colour(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def upload(client, headers, content: bytes, filename: str = "data.npz", **fields: Any):
    data = {k: str(v) for k, v in fields.items()}
    return client.post(URL, files={"file": (filename, content)}, data=data, headers=headers)


def stored(settings, body: dict[str, Any]):
    """The stored file read back by the worker, as a job would."""
    return read_dataset(Path(settings.artifact_dir) / "datasets" / f"{body['id']}.npz", "all")


def assert_problem(r, status: int, *needles: str, field: str = "file") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    messages = " | ".join(e["message"] for e in body.get("errors", [])) + " | " + body["detail"]
    assert any(e["field"] == field for e in body.get("errors", [])), body
    for needle in needles:
        assert needle in messages, f"{needle!r} not in {messages!r}"


def leftover_files(settings) -> list[str]:
    folder = Path(settings.artifact_dir) / "datasets"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------- good npz
def test_npz_uint8_3d_with_labels_round_trip(client, alice, settings):
    x = np.random.default_rng(0).integers(0, 256, (23, 12, 12), dtype=np.uint8)
    y = np.arange(23) % 3
    r = upload(client, alice, npz_bytes(x=x, y=y, class_names=np.array(["a", "b", "c"])))
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["Location"] == f"{URL}/{body['id']}"
    assert body["format"] == "npz"
    assert body["num_samples"] == 23
    assert body["classes"] == ["a", "b", "c"]
    assert body["shape"] == [1, 12, 12]
    assert body["dtype"] == "uint8"
    assert body["labeled"] is True
    assert body["name"] == "data.npz"
    assert body["meta"]["class_counts"] == {"a": 8, "b": 8, "c": 7}
    # Statistics come from the train split only (the fixed holdout is left out).
    train = ~holdout_mask(y, len(y))
    assert body["meta"]["split_sizes"] == {"train": int(train.sum()), "test": int((~train).sum())}
    assert body["meta"]["mean"][0] == pytest.approx(x[train].mean() / 255, abs=1e-5)
    assert body["meta"]["std"][0] == pytest.approx(x[train].std(ddof=1) / 255, abs=1e-5)

    data = stored(settings, body)
    assert data.x.dtype.is_floating_point is False
    np.testing.assert_array_equal(data.x.numpy(), x[:, None])
    np.testing.assert_array_equal(data.y.numpy(), y)
    assert data.class_names == ["a", "b", "c"]
    assert data.scale == 255.0


def test_npz_float_4d_unlabelled_and_channels_last(client, alice, settings):
    rng = np.random.default_rng(1)
    x = rng.random((6, 3, 10, 10))  # float64, N x C x H x W
    r = upload(client, alice, npz_bytes(x=x), filename="floats.npz", name="my floats")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "my floats"
    assert (body["shape"], body["dtype"], body["labeled"], body["classes"]) == (
        [3, 10, 10],
        "float32",
        False,
        [],
    )
    assert "class_counts" not in body["meta"]
    assert len(body["meta"]["mean"]) == 3
    data = stored(settings, body)
    assert data.y is None and data.scale == 1.0
    np.testing.assert_allclose(data.x.numpy(), x.astype(np.float32))

    # N x H x W x C is read as channels last and stored as N x C x H x W.
    nhwc = rng.integers(0, 256, (4, 9, 9, 3), dtype=np.uint8)
    r = upload(client, alice, npz_bytes(x=nhwc, y=np.array([0, 1, 1, 0])))
    assert r.status_code == 201, r.text
    assert r.json()["shape"] == [3, 9, 9]
    assert r.json()["classes"] == ["0", "1"]
    np.testing.assert_array_equal(stored(settings, r.json()).x.numpy(), nhwc.transpose(0, 3, 1, 2))


def test_npz_labels_without_names_and_resize(client, alice, settings):
    x = np.random.default_rng(2).integers(0, 256, (5, 1, 20, 30), dtype=np.uint8)
    # Label 3 unused: classes are 0..max(y), so names are "0".."4".
    y = np.array([0, 4, 1, 2, 4], dtype=np.uint8)
    r = upload(client, alice, npz_bytes(x=x, y=y), image_size=16)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["classes"] == ["0", "1", "2", "3", "4"]
    assert body["meta"]["class_counts"]["3"] == 0
    assert body["shape"] == [1, 16, 16]
    assert body["meta"]["source"]["resized_from"] == [20, 30]
    data = stored(settings, body)
    assert tuple(data.x.shape) == (5, 1, 16, 16)
    np.testing.assert_array_equal(data.y.numpy(), y.astype(np.int64))


# ----------------------------------------------------------------------- good zip
def test_zip_grey_image_folder_round_trip(client, alice, settings):
    files, expected = {}, []
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(3):
            pixels = grey(10 * c + i)
            files[f"{cls}/{i}.png"] = image_bytes(pixels)
            expected.append((pixels, c))
    r = upload(client, alice, zip_bytes(files), filename="pets.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "image_folder"
    assert body["classes"] == ["cat", "dog"]
    assert (body["num_samples"], body["shape"], body["dtype"]) == (6, [1, 16, 16], "uint8")
    assert body["meta"]["class_counts"] == {"cat": 3, "dog": 3}
    data = stored(settings, body)
    np.testing.assert_array_equal(data.x.numpy(), np.stack([p for p, _ in expected])[:, None])
    np.testing.assert_array_equal(data.y.numpy(), [c for _, c in expected])


def test_zip_colour_mixed_modes_under_a_root_folder(client, alice, settings):
    rgb = colour(1)
    files = {
        "data/zebra/a.png": image_bytes(rgb),
        # A grey JPEG and an RGBA PNG in a colour set: both become RGB.
        "data/zebra/b.jpg": image_bytes(grey(2), "JPEG"),
        "data/ant/c.PNG": image_bytes(np.dstack([colour(3), np.full((16, 16), 7, np.uint8)])),
        # Clutter that zip tools and operating systems add is ignored.
        "__MACOSX/data/zebra/._a.png": b"junk",
        "data/.DS_Store": b"junk",
        "data/ant/Thumbs.db": b"junk",
    }
    r = upload(client, alice, zip_bytes(files), filename="animals.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["classes"] == ["ant", "zebra"]
    assert body["shape"] == [3, 16, 16]
    assert body["meta"]["source"]["mode"] == "RGB"
    data = stored(settings, body)
    np.testing.assert_array_equal(data.y.numpy(), [0, 1, 1])
    # Sorted by class, then path: ant/c.PNG, zebra/a.png, zebra/b.jpg.
    np.testing.assert_array_equal(data.x[1].numpy(), rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(data.x[0].numpy(), colour(3).transpose(2, 0, 1))
    # The grey JPEG's three channels are equal.
    assert (data.x[2, 0] == data.x[2, 1]).all() and (data.x[2, 1] == data.x[2, 2]).all()


def test_zip_sizes_resized_and_16_bit_grey(client, alice, settings):
    deep = np.full((20, 10), 65535, dtype=np.uint16)
    files = {
        "a/wide.png": image_bytes(grey(1, 24)),
        "b/deep.png": image_bytes(deep),
        "b/small.png": image_bytes(grey(3, 8)),
    }
    r = upload(client, alice, zip_bytes(files), filename="sizes.zip", image_size=12)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["shape"] == [1, 12, 12]
    data = stored(settings, body)
    # Full-scale 16-bit white stays white (not clipped to 255 from 65535 by accident).
    assert int(data.x[1].min()) == 255


# ------------------------------------------------------------------------ bad npz
BAD_NPZ: list[tuple[str, dict[str, Any], str]] = [
    ("2-D x", {"x": np.zeros((4, 16))}, "x: expected 3 or 4 dimensions"),
    ("2 channels", {"x": np.zeros((4, 2, 16, 16))}, "x: expected 1 or 3 channels"),
    ("no x", {"y": np.zeros(4, dtype=np.int64)}, "x: missing"),
    ("object x", {"x": np.array([[1, "a"]], dtype=object)}, "object arrays are not accepted"),
    ("int64 x", {"x": np.zeros((4, 16, 16), dtype=np.int64)}, "x: dtype int64 is not accepted"),
    ("bool x", {"x": np.zeros((4, 16, 16), dtype=bool)}, "x: dtype bool is not accepted"),
    ("float > 1", {"x": np.full((4, 16, 16), 2.0)}, "x: float values must lie in [0, 1]"),
    ("negative float", {"x": np.full((4, 16, 16), -0.5)}, "x: float values must lie in [0, 1]"),
    ("NaN", {"x": np.full((4, 16, 16), np.nan)}, "x: contains NaN or infinite"),
    ("inf", {"x": np.full((4, 16, 16), np.inf)}, "x: contains NaN or infinite"),
    ("no samples", {"x": np.zeros((0, 16, 16), np.uint8)}, "x: holds no samples"),
    ("tiny images", {"x": np.zeros((4, 4, 4), np.uint8)}, "sides from 8 to 512"),
    ("huge images", {"x": np.zeros((1, 513, 513), np.uint8)}, "sides from 8 to 512"),
    ("not square", {"x": np.zeros((4, 16, 20), np.uint8)}, "must be square"),
    (
        "y length",
        {"x": np.zeros((4, 16, 16), np.uint8), "y": np.zeros(3, np.int64)},
        "y: has 3 labels, but x has 4 samples",
    ),
    (
        # A float y is regression targets (tests/worker/test_regression.py); text is not.
        "string y",
        {"x": np.zeros((4, 16, 16), np.uint8), "y": np.array(["a", "b", "c", "d"])},
        "y: dtype",
    ),
    (
        "3-D float y",
        {"x": np.zeros((4, 16, 16), np.uint8), "y": np.zeros((4, 2, 2), np.float32)},
        "y: float regression targets must have shape",
    ),
    (
        "2-D y",
        {"x": np.zeros((4, 16, 16), np.uint8), "y": np.zeros((4, 2), np.int64)},
        "y: expected one label per sample",
    ),
    (
        "negative y",
        {"x": np.zeros((2, 16, 16), np.uint8), "y": np.array([0, -1])},
        "y: labels must be 0 or more, found -1",
    ),
    (
        "y beyond names",
        {
            "x": np.zeros((2, 16, 16), np.uint8),
            "y": np.array([0, 2]),
            "class_names": np.array(["a", "b"]),
        },
        "y: label 2 is out of range for 2 class_names",
    ),
    (
        "repeated names",
        {
            "x": np.zeros((2, 16, 16), np.uint8),
            "y": np.array([0, 1]),
            "class_names": np.array(["a", "a"]),
        },
        "class_names: repeated names 'a'",
    ),
    (
        "empty name",
        {
            "x": np.zeros((2, 16, 16), np.uint8),
            "y": np.array([0, 1]),
            "class_names": np.array(["a", " "]),
        },
        "class_names[1]: empty name",
    ),
    (
        "NUL in a name",
        {
            "x": np.zeros((2, 16, 16), np.uint8),
            "y": np.array([0, 1]),
            "class_names": np.array(["a", "b\x00c"]),
        },
        "class_names[1]: contains control characters",
    ),
    (
        "numeric names",
        {
            "x": np.zeros((2, 16, 16), np.uint8),
            "y": np.array([0, 1]),
            "class_names": np.array([1.0, 2.0]),
        },
        "class_names: dtype float64 is not accepted",
    ),
    (
        "names without y",
        {"x": np.zeros((2, 16, 16), np.uint8), "class_names": np.array(["a"])},
        "class_names: given without y",
    ),
    (
        "extra key",
        {"x": np.zeros((2, 16, 16), np.uint8), "labels": np.zeros(2), "z": np.zeros(1)},
        "unknown arrays 'labels', 'z'",
    ),
]


def test_bad_npz_uploads_name_the_problem(client, alice, settings):
    for case, arrays, needle in BAD_NPZ:
        r = upload(client, alice, npz_bytes(**arrays))
        assert r.status_code == 422, f"{case}: {r.status_code} {r.text}"
        assert_problem(r, 422, needle)
    assert client.get(URL, headers=alice).json()["datasets"] == []
    # Nothing half-written is left behind.
    assert leftover_files(settings) == []


def _nameless_entry_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"abc")
    return buf.getvalue()


def test_bad_files_name_the_problem(client, alice):
    good = npz_bytes(x=np.zeros((8, 16, 16), np.uint8))
    # Flip bytes inside x's data: the zip's CRC check catches it.
    corrupt = bytearray(good)
    corrupt[len(good) // 2 : len(good) // 2 + 16] = b"\xff" * 16
    single = io.BytesIO()
    np.save(single, np.zeros((2, 16, 16), np.uint8))
    cases = [
        ("random bytes", b"hello, this is not data" * 10, "x.npz", "not a zip or .npz archive"),
        ("truncated", good[: len(good) // 2], "x.npz", "not a zip or .npz archive"),
        ("corrupt member", bytes(corrupt), "x.npz", "Bad CRC-32 for file 'x.npy'"),
        ("single .npy", single.getvalue(), "x.npy", "single .npy array"),
        (
            "zip as npz",
            zip_bytes({"a/1.png": image_bytes(grey(0))}),
            "x.npz",
            "a/1.png: an .npz holds only .npy arrays",
        ),
        # An entry without a name made zipfile's is_dir() raise IndexError (was a 500).
        ("nameless entry", _nameless_entry_zip(), "x.zip", "empty name"),
    ]
    for case, content, filename, needle in cases:
        r = upload(client, alice, content, filename=filename)
        assert r.status_code == 422, f"{case}: {r.status_code} {r.text}"
        assert_problem(r, 422, needle)


# ------------------------------------------------------------------------ bad zip
def test_bad_image_folders_name_the_problem(client, alice, settings):
    png = image_bytes(grey(0))
    gif = io.BytesIO()
    Image.fromarray(grey(1)).save(gif, format="GIF")
    cases = [
        ("text file", {"a/1.png": png, "a/notes.txt": b"hi"}, "a/notes.txt: not a PNG or JPEG"),
        ("truncated png", {"a/1.png": png, "b/2.png": png[:60]}, "b/2.png: not a readable image"),
        ("gif as png", {"a/1.png": png, "a/2.png": gif.getvalue()}, "a/2.png: not a PNG or JPEG"),
        (
            "sizes differ",
            {"a/1.png": png, "b/2.png": image_bytes(grey(2, 20))},
            "images differ in size: a/1.png is 16x16, b/2.png is 20x20; send image_size",
        ),
        ("not square", {"a/1.png": image_bytes(grey(0)[:, :12])}, "must be square"),
        ("too small", {"a/1.png": image_bytes(grey(0, 4))}, "sides from 8 to 512"),
        ("parent path", {"a/1.png": png, "../evil.png": png}, "'..' are not accepted"),
        ("absolute path", {"/etc/a.png": png}, "absolute paths"),
        ("no class folder", {"loose.png": png}, "loose.png: images must be inside a class folder"),
        ("nothing", {"__MACOSX/a/._1.png": b"x", ".hidden/a.png": png}, "holds no PNG or JPEG"),
    ]
    for case, files, needle in cases:
        r = upload(client, alice, zip_bytes(files), filename="set.zip")
        assert r.status_code == 422, f"{case}: {r.status_code} {r.text}"
        assert_problem(r, 422, needle)
    assert leftover_files(settings) == []


def test_bad_form_and_body(client, alice):
    content = npz_bytes(x=np.zeros((2, 16, 16), np.uint8))
    r = upload(client, alice, content, image_size=4)
    assert_problem(r, 422, "greater than or equal to 8", field="image_size")
    r = upload(client, alice, content, name="bad\x01name")
    assert_problem(r, 422, "control characters", field="name")
    r = upload(client, alice, content, colour="blue")
    assert_problem(r, 422, "unknown field", field="colour")
    r = client.post(URL, data={"name": "x"}, files={"other": ("a", b"1")}, headers=alice)
    assert_problem(r, 422, "missing")
    r = client.post(URL, data={"name": "x"}, headers=alice)
    assert r.status_code == 415, r.text
    r = client.post(URL, files={"file": ("a.npz", b"")}, headers=alice)
    assert_problem(r, 422, "empty")
    # A JSON body is a dataset by URL (tests/app/test_dataset_urls.py), checked as such.
    r = client.post(URL, json={"x": [1, 2]}, headers=alice)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"x", "url"}
    r = client.post(URL, content=b"x", headers={**alice, "Content-Type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post(URL, files={"file": ("a.npz", content)})
    assert r.status_code == 401


def test_unknown_multipart_charset_is_a_400_not_a_500(client, alice, settings):
    body = b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc\r\n--xx--\r\n'
    content_type = "multipart/form-data; boundary=xx; charset=bogus"
    r = client.post(URL, content=body, headers={**alice, "content-type": content_type})
    assert r.status_code == 400, r.text
    assert "bogus" in r.json()["detail"]
    assert leftover_files(settings) == []


# ---------------------------------------------------------------------------- size
def set_limit(monkeypatch, limit: int) -> None:
    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", str(limit))
    get_settings.cache_clear()


def test_over_the_limit_answers_413(client, alice, settings, monkeypatch):
    set_limit(monkeypatch, 4096)
    # Just over the limit: the body passes the Content-Length check, the stream does not.
    r = upload(client, alice, np.random.default_rng(0).bytes(5000), filename="big.npz")
    assert_problem(r, 413, "larger than the limit of 4096 bytes")
    # Far over: refused on its Content-Length.
    r = upload(client, alice, bytes(200_000), filename="big.npz")
    assert_problem(r, 413, "4096")
    # A small zip that expands past 4 x the limit (a zip bomb) is refused too.
    bomb = zip_bytes({"a/1.png": bytes(1_000_000)})
    assert len(bomb) < 4096
    r = upload(client, alice, bomb, filename="bomb.zip")
    assert_problem(r, 413, "expands to")
    # An npz whose compressed x would decode past the bound.
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((100, 64, 64), np.uint8))
    assert len(buf.getvalue()) < 4096
    r = upload(client, alice, buf.getvalue(), filename="bomb.npz")
    assert r.status_code == 413, r.text
    assert leftover_files(settings) == []
    # Under the limit still works.
    r = upload(client, alice, npz_bytes(x=np.zeros((2, 16, 16), np.uint8)))
    assert r.status_code == 201, r.text


def multipart_body(content: bytes, boundary: str = "b0undary") -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="d.npz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_streamed_bodies_without_length(client, alice, settings, monkeypatch):
    headers = {**alice, "Content-Type": "multipart/form-data; boundary=b0undary"}
    body = multipart_body(npz_bytes(x=np.zeros((2, 16, 16), np.uint8)))

    def chunks(data: bytes, size: int = 1000):
        # A generator body goes out chunked, without Content-Length.
        for i in range(0, len(data), size):
            yield data[i : i + size]

    r = client.post(URL, content=chunks(body), headers=headers)
    assert r.status_code == 201, r.text
    # A body that stops inside the file part is malformed, not a short file.
    cut = body[: len(body) - 30]
    r = client.post(URL, content=chunks(cut), headers=headers)
    assert r.status_code == 400 and "ended inside the file part" in r.json()["detail"]
    set_limit(monkeypatch, 4096)
    r = client.post(URL, content=chunks(multipart_body(bytes(50_000))), headers=headers)
    assert_problem(r, 413, "4096")
    assert [p for p in leftover_files(settings) if p.startswith(".")] == []


def test_content_length_is_checked_before_reading(monkeypatch):
    set_limit(monkeypatch, 1000)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    scope = {
        "type": "http",
        "method": "POST",
        "path": URL,
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=xyz"),
            (b"content-length", str(10**9).encode()),
        ],
    }

    async def go() -> None:
        async with receive_upload(Request(scope, receive), dest_dir=Path("/nonexistent")):
            raise AssertionError("unreachable")

    with pytest.raises(ProblemError) as err:
        asyncio.run(go())
    assert err.value.status == 413


# ---------------------------------------------------------- list, get, delete, owners
def test_list_get_delete_and_owners(client, alice, bob, settings):
    ids = []
    for i in range(3):
        x = np.full((2, 8, 8), i, np.uint8)
        r = upload(client, alice, npz_bytes(x=x), name=f"set{i}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    page = client.get(URL, params={"page_size": 2}, headers=alice).json()
    assert [d["id"] for d in page["datasets"]] == ids[::-1][:2]
    assert page["next_page_token"]
    rest = client.get(
        URL, params={"page_size": 2, "page_token": page["next_page_token"]}, headers=alice
    ).json()
    assert [d["id"] for d in rest["datasets"]] == [ids[0]]
    assert rest["next_page_token"] is None

    r = client.get(f"{URL}/{ids[1]}", headers=alice)
    assert r.status_code == 200 and r.json()["name"] == "set1"
    # Bob sees nothing of Alice's, and cannot delete it.
    assert client.get(URL, headers=bob).json()["datasets"] == []
    assert client.get(f"{URL}/{ids[1]}", headers=bob).status_code == 404
    assert client.delete(f"{URL}/{ids[1]}", headers=bob).status_code == 404

    path = Path(settings.artifact_dir) / "datasets" / f"{ids[1]}.npz"
    assert path.exists()
    assert client.delete(f"{URL}/{ids[1]}", headers=alice).status_code == 204
    assert not path.exists()
    assert client.get(f"{URL}/{ids[1]}", headers=alice).status_code == 404
    assert client.delete(f"{URL}/{ids[1]}", headers=alice).status_code == 404
    assert len(client.get(URL, headers=alice).json()["datasets"]) == 2


def test_a_job_can_use_an_upload_and_it_cannot_be_deleted_under_it(client, alice, settings):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (30, 3, 12, 12), dtype=np.uint8)
    y = np.arange(30) % 3
    r = upload(client, alice, npz_bytes(x=x, y=y, class_names=np.array(["r", "g", "b"])))
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    spec = {
        "kind": "train",
        "model": {"arch": "small_cnn", "width": 0.25},
        "train": {"dataset": {"id": ds, "classes": ["g", "b"]}, "epochs": 1, "min_steps": 0},
    }
    r = client.post("/api/v1/jobs", json=spec, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    r = client.delete(f"{URL}/{ds}", headers=alice)
    assert r.status_code == 409 and job in r.json()["detail"]
    assert client.post(f"/api/v1/jobs/{job}:cancel", headers=alice).status_code == 202
    assert client.delete(f"{URL}/{ds}", headers=alice).status_code == 204


def _upload_three_classes(client, alice) -> str:
    x = np.random.default_rng(4).integers(0, 256, (30, 3, 12, 12), dtype=np.uint8)
    y = np.arange(30) % 3
    r = upload(client, alice, npz_bytes(x=x, y=y))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _in_thread(work) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `work` in a thread; its result or the service's error lands in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except ServiceError as exc:
            out["problem"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _spec_using(ds: str) -> Any:
    return TypeAdapter(JobSpec).validate_python(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.25},
            "train": {"dataset": {"id": ds}, "epochs": 1, "min_steps": 0},
        }
    )


def test_a_delete_racing_a_submission_waits_and_refuses(client, alice, settings):
    """The submission has checked the dataset, not yet stored its job: the delete waits
    for it (a row lock on Postgres, the write lock on SQLite), then sees the job: 409."""
    ds = _upload_three_classes(client, alice)
    spec = _spec_using(ds)
    with get_write_sessionmaker()() as submitting:
        assert check_spec(submitting, "alice", spec)[1] == []
        thread, out = _in_thread(lambda: _delete(settings, ds))
        thread.join(0.5)
        assert thread.is_alive(), f"the delete did not wait: {out}"
        job, created = jobs_service.create_job(
            submitting,
            owner="alice",
            spec=spec,
            raw_body={},
            idempotency_key=None,
            default_max_attempts=3,
        )
    thread.join(30)
    assert created and isinstance(out["problem"], ConflictError)
    assert job.id in out["problem"].detail
    assert client.get(f"{URL}/{ds}", headers=alice).status_code == 200


def test_a_submission_racing_a_delete_waits_and_is_refused(client, alice, settings):
    """The delete holds the dataset: the submission waits for it, then finds no dataset
    (422 naming the id) instead of queueing a job whose data is gone."""
    ds = _upload_three_classes(client, alice)
    spec = _spec_using(ds)
    with get_write_sessionmaker()() as deleting:
        datasets_service.get_owned(deleting, "alice", ds, lock=True)
        thread, out = _in_thread(lambda: _submit(spec))
        thread.join(0.5)
        assert thread.is_alive(), f"the submission did not wait: {out}"
        datasets_service.delete_dataset(
            deleting, owner="alice", dataset_id=ds, artifact_dir=Path(settings.artifact_dir)
        )
    thread.join(30)
    problem = out["problem"]
    assert isinstance(problem, InvalidError)
    assert problem.errors == [
        {"field": "train.dataset.id", "message": f"no dataset with id {ds!r}"}
    ]
    assert client.get("/api/v1/jobs", headers=alice).json()["jobs"] == []


def _delete(settings, ds: str) -> None:
    with get_write_sessionmaker()() as session:
        datasets_service.delete_dataset(
            session, owner="alice", dataset_id=ds, artifact_dir=Path(settings.artifact_dir)
        )


def _submit(spec: Any) -> Any:
    with get_write_sessionmaker()() as session:
        return jobs_service.create_job(
            session,
            owner="alice",
            spec=spec,
            raw_body={},
            idempotency_key=None,
            default_max_attempts=3,
        )
