"""Serving an int8 student: `auto` takes model.int8.onnx when the worker judged it
servable, `onnx_int8` whenever it exists, `onnx` and `torch` keep fp32, and a model
without the file falls back to fp32 with a warning."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from app.core.model_format import StoredModel
from app.serving.backends import choose_backend, load_model
from tests.app.serving.factory import export_random
from worker.quantize import quantize_onnx

SERVED = {"served": True, "reason": "within int8_max_drop and 1.5x faster at batch 32"}


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small_cnn (1 x 8 x 8, 0-255) with a real int8 quantization beside it,
    recorded as a job that asked for int8 records it."""
    folder = tmp_path_factory.mktemp("int8") / "template"
    meta = export_random(folder, in_channels=1, image_size=8, scale=255.0, classes=list("abc"))
    calibration = np.random.default_rng(0).uniform(0, 255, (64, 1, 8, 8)).astype(np.float32)
    (folder / "model.int8.onnx").write_bytes(
        quantize_onnx((folder / "model.onnx").read_bytes(), calibration)
    )
    meta["files"].append("model.int8.onnx")
    meta["int8"] = SERVED
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def stored(template: Path, tmp_path: Path, **int8_changes) -> StoredModel:
    folder = tmp_path / "m"
    shutil.copytree(template, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["int8"] = {**meta["int8"], **int8_changes}
    # A fresh id per test: warnings are logged once per model id.
    meta["id"] = str(uuid.uuid4())
    (folder / "model.json").write_text(json.dumps(meta))
    return StoredModel(meta["id"], folder, meta)


def load(ref: StoredModel, setting: str):
    import torch

    return load_model(ref, setting=setting, device=torch.device("cpu"), threads=1)


def test_a_served_int8_model_is_loaded_as_onnx_int8(int8_folder, tmp_path):
    ref = stored(int8_folder, tmp_path)
    model = load(ref, "auto")
    assert model.backend.name == "onnx_int8"
    assert model.size_bytes == (ref.folder / "model.int8.onnx").stat().st_size
    x = np.random.default_rng(1).uniform(0, 255, (5, 1, 8, 8)).astype(np.float32)
    out = model.backend.run(x)
    assert out.shape == (5, 3) and out.dtype == np.float32 and np.isfinite(out).all()
    # The fp32 backends keep their own files.
    assert load(ref, "onnx").backend.name == "onnx"
    assert load(ref, "torch").backend.name == "torch"
    assert choose_backend(ref.meta, ref.folder, setting="auto", device="cuda") == "torch"


def test_auto_keeps_fp32_when_the_worker_did_not_serve_int8(int8_folder, tmp_path):
    ref = stored(int8_folder, tmp_path, served=False, reason="not faster at batch 32")
    assert load(ref, "auto").backend.name in ("onnx", "torch")
    # onnx_int8 forces it whenever the file is there.
    assert load(ref, "onnx_int8").backend.name == "onnx_int8"


def test_onnx_int8_without_the_file_falls_back_with_a_warning(int8_folder, tmp_path, caplog):
    ref = stored(int8_folder, tmp_path)
    (ref.folder / "model.int8.onnx").unlink()
    with caplog.at_level(logging.WARNING, logger="app.serving.backends"):
        assert load(ref, "onnx_int8").backend.name in ("onnx", "torch")
    assert "has no int8 graph (model.int8.onnx is missing); serving with fp32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.serving.backends"):
        load(ref, "onnx_int8")
    assert "has no int8 graph" not in caplog.text  # once per model, not per call
    # Under auto a missing file is no int8 either, whatever model.json says.
    assert load(ref, "auto").backend.name in ("onnx", "torch")


def test_the_api_shows_serves_and_hands_out_the_int8_model(client, alice, int8_folder):
    import onnxruntime as ort

    from tests.app.serving.factory import install_model

    model_id = install_model(int8_folder, owner="alice")
    base = f"/api/v1/models/{model_id}"
    model = client.get(base, headers=alice).json()
    assert model["serving_backend"] == "onnx_int8" and model["int8"] == SERVED
    assert "model.int8.onnx" in model["files"]
    r = client.get(f"{base}/artifacts/model.int8.onnx", headers=alice)
    assert r.status_code == 200
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = np.full((2, 8, 8), 128.0).tolist()
    r = client.post(f"{base}/predict", json={"inputs": x}, headers=alice)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_a_model_without_int8_says_why_there_is_no_file(client, alice, tmp_path):
    from tests.app.serving.factory import install_model

    folder = tmp_path / "fp32"
    export_random(folder, in_channels=1, image_size=8, scale=255.0, classes=list("ab"))
    model_id = install_model(folder, owner="alice")
    model = client.get(f"/api/v1/models/{model_id}", headers=alice).json()
    assert model["int8"] is None and model["serving_backend"] in ("onnx", "torch")
    r = client.get(f"/api/v1/models/{model_id}/artifacts/model.int8.onnx", headers=alice)
    assert r.status_code == 404 and "its job did not ask for int8" in r.json()["detail"]


def test_on_a_gpu_serving_device_pytorch_serves_whatever_int8_says(int8_folder, tmp_path):
    ref = stored(int8_folder, tmp_path)
    for setting in ("auto", "onnx_int8", "onnx"):
        assert choose_backend(ref.meta, ref.folder, setting=setting, device="cuda") == "torch"
