"""POST /api/v1/datasets with a JSON body: datasets by reference (an image folder or
WebDataset tar shards at a file:// URL), on both backends. What registration reads and
stores, every way a URL can be refused (422 naming `url`), and a job that trains on one
through the real worker."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from app.config import get_settings
from app.core.datasets import holdout_mask
from app.core.datasets.stored import read_dataset
from tests.conftest import S3_BUCKET
from tests.worker import jobrun

URL = "/api/v1/datasets"


# ------------------------------------------------------------------------- helpers
def digits(n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` digits as uint8 [N, 8, 8] images (0-255) and their labels."""
    d = load_digits()
    x = np.clip(np.rint(d.images[:n] * 255 / 16), 0, 255).astype(np.uint8)
    return x, d.target[:n].astype(np.int64)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """class/NNNN.png for every image (class folders named by digit)."""
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(png(img))
    return root


def shards(root: Path, x: np.ndarray, y: np.ndarray | None, per_shard: int = 64) -> Path:
    """WebDataset shards: shard-NNNN.tar of key.png (+ key.cls)."""
    root.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, len(x), per_shard)):
        with tarfile.open(root / f"shard-{s:04d}.tar", "w") as tf:
            for i in range(start, min(len(x), start + per_shard)):
                members = {f"sample{i:05d}.png": png(x[i])}
                if y is not None:
                    members[f"sample{i:05d}.cls"] = str(int(y[i])).encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Datasets by URL allowed under tmp_path/data only."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("STILLHOUSE_DATASET_URL_ROOTS", f"file://{data}")
    get_settings.cache_clear()
    return data


def register(client, headers, url: str, **fields):
    return client.post(URL, json={"url": url, **fields}, headers=headers)


def assert_url_problem(r, *needles: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert [e["field"] for e in body["errors"]] == ["url"], body
    for needle in needles:
        assert needle in body["errors"][0]["message"], body


# ------------------------------------------------------------------------- tests
def test_an_image_folder_by_url_is_indexed_not_copied_and_reads_as_uploaded(
    client, alice, roots, settings
):
    x, y = digits()
    folder = image_folder(roots / "digits", x, y)
    (folder / "README.txt").write_text("not an image, skipped")
    r = register(client, alice, f"file://{folder}", name="digits by url")
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["Location"] == f"{URL}/{body['id']}"
    assert body["format"] == "image_folder"
    assert body["url"] == f"file://{folder}"
    assert body["name"] == "digits by url"
    assert body["num_samples"] == len(x)
    assert body["classes"] == [f"digit{i}" for i in range(10)]
    assert body["shape"] == [1, 8, 8]
    assert body["dtype"] == "uint8"
    counts = np.bincount(y, minlength=10)
    assert body["meta"]["class_counts"] == {f"digit{i}": int(c) for i, c in enumerate(counts)}
    # Images are ordered by class: the holdout is the upload's rule on that order.
    order = np.argsort(y, kind="stable")
    test = holdout_mask(y[order], len(y))
    assert body["meta"]["split_sizes"] == {"train": int((~test).sum()), "test": int(test.sum())}
    assert body["meta"]["mean"][0] == pytest.approx(x[order][~test].mean() / 255, abs=0.02)
    assert client.get(f"{URL}/{body['id']}", headers=alice).json() == body

    # The worker reads it as it would read the same images uploaded.
    index = Path(settings.artifact_dir) / "datasets" / f"{body['id']}.index.json"
    data = read_dataset(index, "train")
    assert data.streamed and len(data) == int((~test).sum())
    assert torch.equal(data.x[:], torch.from_numpy(x[order][~test][:, None]))
    assert torch.equal(data.y, torch.from_numpy(y[order][~test]))

    # Deleting it removes the index, never the user's images.
    assert client.delete(f"{URL}/{body['id']}", headers=alice).status_code == 204
    assert not index.exists()
    assert len(list(folder.rglob("*.png"))) == len(x)


def test_webdataset_shards_with_class_names_register_and_stream(client, alice, roots, settings):
    x, y = digits(130)
    folder = shards(roots / "shards", x, y, per_shard=50)
    (folder / "classes.txt").write_text("\n".join(f"n{i}" for i in range(10)) + "\n")
    r = register(client, alice, f"file://{folder}", format="webdataset")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "webdataset"
    assert body["num_samples"] == 130
    assert body["classes"] == [f"n{i}" for i in range(10)]
    assert body["meta"]["source"]["files"] == 3
    data = read_dataset(Path(settings.artifact_dir) / body_path(body), "all")
    order = np.argsort(y, kind="stable")
    assert torch.equal(data.x[:], torch.from_numpy(x[order][:, None]))

    # One shard by itself, unlabelled.
    single = shards(roots / "unlabelled", x[:20], None)
    r = register(client, alice, f"file://{single}/shard-0000.tar", format="webdataset")
    assert r.status_code == 201, r.text
    assert r.json()["labeled"] is False
    assert r.json()["classes"] == []


def body_path(body: dict) -> str:
    return f"datasets/{body['id']}.index.json"


def test_urls_that_cannot_be_registered_answer_422_naming_url(
    client, alice, roots, tmp_path, monkeypatch
):
    x, y = digits(30)
    folder = image_folder(roots / "ok", x, y)
    assert_url_problem(register(client, alice, f"file://{tmp_path}/elsewhere"), "not under")
    assert_url_problem(register(client, alice, f"file://{roots}/../../etc"), "not under")
    assert_url_problem(register(client, alice, "http://example.com/x"), "file:///path")
    assert_url_problem(register(client, alice, f"file://{roots}/missing"), "nothing at")
    (roots / "empty").mkdir()
    assert_url_problem(register(client, alice, f"file://{roots}/empty"), "no PNG or JPEG")
    loose = roots / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(png(x[0]))
    assert_url_problem(register(client, alice, f"file://{loose}"), "inside a class folder")
    sizes = image_folder(roots / "sizes", x[:10], y[:10])
    (sizes / "digit0" / "big.png").write_bytes(png(np.zeros((12, 12), np.uint8)))
    assert_url_problem(register(client, alice, f"file://{sizes}"), "send image_size")
    assert register(client, alice, f"file://{sizes}", image_size=16).status_code == 201
    broken = image_folder(roots / "broken", x[:10], y[:10])
    (broken / "digit0" / "zz.png").write_bytes(b"not a png")
    assert_url_problem(register(client, alice, f"file://{broken}"), "not a readable PNG")
    # A header that opens, pixels that do not: still a 422 on url, naming the file.
    cut = image_folder(roots / "cut", x[:10], y[:10])
    whole = png(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    (cut / "digit0" / "0000.png").write_bytes(whole[: len(whole) // 2])
    assert_url_problem(register(client, alice, f"file://{cut}"), "0000.png")
    assert_url_problem(register(client, alice, f"file://{folder}/digit0/0000.png"), "is a file")
    gz = roots / "gz"
    gz.mkdir()
    (gz / "a.tar.gz").write_bytes(b"\x1f\x8b not really")
    assert_url_problem(register(client, alice, f"file://{gz}", format="webdataset"), ".tar")
    bad_tar = roots / "badtar"
    bad_tar.mkdir()
    (bad_tar / "a.tar").write_bytes(b"garbage" * 100)
    assert_url_problem(
        register(client, alice, f"file://{bad_tar}", format="webdataset"), "uncompressed tar"
    )
    # Bad JSON bodies name the field, or say the body is not JSON.
    r = client.post(URL, json={"url": f"file://{folder}", "colour": 1}, headers=alice)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "colour"
    r = client.post(URL, content=b"{", headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    # With no roots configured the feature is off, and says which setting turns it on.
    monkeypatch.setenv("STILLHOUSE_DATASET_URL_ROOTS", "")
    get_settings.cache_clear()
    assert_url_problem(register(client, alice, f"file://{folder}"), "DATASET_URL_ROOTS")
    assert client.get(URL, headers=alice).json()["datasets"][0]["name"] == "sizes"


def test_a_job_trains_on_a_dataset_by_url_through_the_worker(client, alice, roots):
    x, y = digits(300)
    folder = image_folder(roots / "train", x, y)
    r = register(client, alice, f"file://{folder}")
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    spec = {
        "kind": "train",
        "name": "streamed",
        "model": {"arch": "small_cnn", "width": 0.25},
        "train": {
            "dataset": {"id": dataset_id, "classes": ["digit0", "digit1", "digit2"]},
            "epochs": 2,
            "batch_size": 16,
            "min_steps": 0,
        },
    }
    r = client.post("/api/v1/jobs", json=spec, headers=alice)
    assert r.status_code == 201, r.text
    jobrun.run_one()
    job = client.get(f"/api/v1/jobs/{r.json()['id']}", headers=alice).json()
    assert job["state"] == "SUCCEEDED", job
    model = client.get(f"/api/v1/models/{job['model_id']}", headers=alice).json()
    assert model["classes"] == ["digit0", "digit1", "digit2"]
    # Small enough for memory: read once, not streamed (the S3 test below streams).
    logs = [e["message"] for e in jobrun.events(job["id"], "log")]
    assert not any("every epoch" in m for m in logs), logs


def test_datasets_in_an_s3_bucket_register_and_train(
    client, alice, tmp_path, monkeypatch, s3_endpoint
):
    """The same through s3:// on a real S3-compatible server (moto's, on a loopback port):
    an image folder and shards in a bucket, indexed by the API, streamed by the worker."""
    import s3fs

    monkeypatch.setenv("STILLHOUSE_S3_ENDPOINT_URL", s3_endpoint)
    # Smaller than the set decoded: the worker streams it instead of reading it into memory.
    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("STILLHOUSE_DATASET_URL_ROOTS", f"s3://{S3_BUCKET}/datasets")
    get_settings.cache_clear()
    prefix = f"{S3_BUCKET}/datasets/{tmp_path.name}"
    x, y = digits(100)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(image_folder(tmp_path / "folder", x, y)), f"{prefix}/folder", recursive=True)
    fs.put(str(shards(tmp_path / "shards", x, y, 40)), f"{prefix}/shards", recursive=True)

    r = register(client, alice, f"s3://{prefix}/folder", name="in a bucket")
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 100 and r.json()["url"] == f"s3://{prefix}/folder"
    r2 = register(client, alice, f"s3://{prefix}/shards", format="webdataset")
    assert r2.status_code == 201, r2.text
    assert r2.json()["classes"] == [str(i) for i in range(10)]
    assert_url_problem(register(client, alice, f"s3://{prefix}/none"), "nothing at")
    assert_url_problem(register(client, alice, f"s3://{S3_BUCKET}/other"), "not under")

    for dataset_id in (r.json()["id"], r2.json()["id"]):
        spec = {
            "kind": "train",
            "name": "from s3",
            "model": {"arch": "small_cnn", "width": 0.25},
            "train": {"dataset": {"id": dataset_id}, "epochs": 1, "min_steps": 0},
        }
        job = client.post("/api/v1/jobs", json=spec, headers=alice)
        assert job.status_code == 201, job.text
        jobrun.run_one()
        state = client.get(f"/api/v1/jobs/{job.json()['id']}", headers=alice).json()
        assert state["state"] == "SUCCEEDED", state
        logs = [e["message"] for e in jobrun.events(job.json()["id"], "log")]
        assert any("read from their URL every epoch" in m for m in logs), logs
