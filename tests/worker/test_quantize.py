"""int8 students: a trained small_cnn quantized with ONNX Runtime for real, measured
against fp32, recorded in model.json; the serve rule and the size search's precision
dimension on hand-made figures; a quantization that fails leaves no file and says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from app.core.datasets import InMemoryData
from app.core.network import NetworkConfig, build_network
from app.schemas.export import ExportSpec
from app.schemas.model_spec import Constraints
from app.schemas.stage_spec import DatasetRef
from worker.build import Trained
from worker.data import load_dataset
from worker.export import ExportedModel, export_model
from worker.int8_export import Int8Plan, add_int8
from worker.quantize import Int8Result, model_inputs, serve_decision
from worker.report import int8_text, serving_figures
from worker.size_search import choose_candidate, int8_choice, int8_entry

DIGITS_TRAIN = DatasetRef(name="digits")
DIGITS_TEST = DatasetRef(name="digits", split="test")
BLOCK_FIELDS = {
    "accuracy",
    "fp32_accuracy",
    "drop_points",
    "max_drop",
    "batch_1_ms",
    "batch_32_ms",
    "fp32_batch_1_ms",
    "fp32_batch_32_ms",
    "speedup_batch_1",
    "speedup_batch_32",
    "size_bytes",
    "served",
    "reason",
}


def load(ref: DatasetRef) -> InMemoryData:
    return load_dataset(ref, data_root=Path("."), seed=0)


@pytest.fixture(scope="module")
def student() -> Trained:
    """small_cnn (width 0.5) trained for three epochs on all ten digits: a fraction of a
    second on one core, about 0.93 on the test split."""
    torch.set_num_threads(1)
    data = load(DIGITS_TRAIN)
    mean, std = data.channel_stats()
    config = NetworkConfig("small_cnn", 10, 1, 8, width=0.5, scale=data.scale, mean=mean, std=std)
    torch.manual_seed(0)
    net = build_network(config)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    assert data.y is not None
    x = data.x.float()
    for _ in range(3):
        for rows in torch.randperm(len(data)).split(64):
            loss = F.cross_entropy(net(x[rows]), data.y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Trained(net.eval(), config, data.class_names)


def export(trained: Trained, folder: Path) -> ExportedModel:
    return export_model(
        trained.net,
        trained.config,
        model_id=folder.name,
        folder=folder,
        class_names=trained.class_names,
        metrics={},
        job_id=None,
        name="int8-test",
        time_backends=False,
    )


def plan(**spec: Any) -> Int8Plan:
    return Int8Plan(ExportSpec(int8=True, **spec), [DIGITS_TRAIN], load, seed=0)


@pytest.fixture(scope="module")
def quantized(student: Trained, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    exported = export(student, tmp_path_factory.mktemp("int8") / "m")
    add_int8(plan(calibration_samples=128), exported, student, load(DIGITS_TEST))
    return exported


def test_the_int8_model_is_written_runs_and_agrees_with_fp32(quantized: ExportedModel):
    folder = quantized.folder
    assert (folder / "model.int8.onnx").is_file()
    meta = json.loads((folder / "model.json").read_text())
    assert meta == quantized.meta
    assert meta["files"] == ["model.safetensors", "model.json", "model.onnx", "model.int8.onnx"]
    # A real QDQ graph: quantize/dequantize pairs, and int8 weights a fraction of fp32's.
    int8 = ort.InferenceSession(str(folder / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = model_inputs(load(DIGITS_TEST), NetworkConfig.from_json(meta["network"]))
    assert x is not None
    a = fp32.run(["logits"], {"input": x})[0]
    b = int8.run(["logits"], {"input": x})[0]
    assert b.shape == a.shape and b.dtype == np.float32
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.9
    assert meta["int8"]["size_bytes"] < 0.7 * meta["int8"]["fp32_size_bytes"]


def test_model_json_records_the_measurements_and_the_decision(quantized: ExportedModel):
    block = quantized.meta["int8"]
    assert set(block) >= BLOCK_FIELDS, BLOCK_FIELDS - set(block)
    assert "error" not in block
    assert block["max_drop"] == 0.5 and block["eval_samples"] == len(load(DIGITS_TEST))
    assert block["fp32_accuracy"] > 0.8 and block["accuracy"] > 0.8
    assert block["drop_points"] == pytest.approx(
        100 * (block["fp32_accuracy"] - block["accuracy"]), abs=1e-3
    )
    for b in (1, 32):
        assert block[f"batch_{b}_ms"] > 0 and block[f"fp32_batch_{b}_ms"] > 0
        ratio = block[f"fp32_batch_{b}_ms"] / block[f"batch_{b}_ms"]
        assert block[f"speedup_batch_{b}"] == pytest.approx(ratio, rel=1e-2)
    assert block["calibration"] == {"samples": 128, "source": "digits/train"}
    # Whatever the machine measured, the decision is the rule applied to those figures.
    assert (block["served"], block["reason"]) == serve_decision(
        drop_points=block["drop_points"],
        max_drop=block["max_drop"],
        int8_batch_32_ms=block["batch_32_ms"],
        fp32_batch_32_ms=block["fp32_batch_32_ms"],
    )


def test_the_serve_rule_needs_the_budget_and_the_speed():
    ok, why = serve_decision(
        drop_points=0.3, max_drop=0.5, int8_batch_32_ms=1.0, fp32_batch_32_ms=2.0
    )
    assert ok and "2.00x faster" in why
    # Exactly the budget is within it; int8 more accurate than fp32 is too.
    assert serve_decision(drop_points=0.5, max_drop=0.5, int8_batch_32_ms=1, fp32_batch_32_ms=2)[0]
    assert serve_decision(drop_points=-1, max_drop=0, int8_batch_32_ms=1, fp32_batch_32_ms=2)[0]
    ok, why = serve_decision(
        drop_points=0.6, max_drop=0.5, int8_batch_32_ms=1.0, fp32_batch_32_ms=2.0
    )
    assert not ok and "over int8_max_drop 0.5" in why
    ok, why = serve_decision(
        drop_points=0.0, max_drop=0.5, int8_batch_32_ms=2.0, fp32_batch_32_ms=2.0
    )
    assert not ok and "not 1.05x faster at batch 32 (2 ms against fp32's 2 ms)" in why
    # Faster within timing noise is not faster: 3% is not enough, 5% is.
    assert not serve_decision(
        drop_points=0, max_drop=0.5, int8_batch_32_ms=1.0, fp32_batch_32_ms=1.03
    )[0]
    ok, _ = serve_decision(drop_points=0, max_drop=0.5, int8_batch_32_ms=1, fp32_batch_32_ms=1.05)
    assert ok
    assert not serve_decision(
        drop_points=None, max_drop=0.5, int8_batch_32_ms=1, fp32_batch_32_ms=2
    )[0]


def test_a_failed_quantization_leaves_no_file_and_says_why(
    student: Trained, quantized: ExportedModel, tmp_path: Path
):
    folder = tmp_path / "broken"
    shutil.copytree(quantized.folder, folder)
    (folder / "model.int8.onnx").unlink()
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    meta = json.loads((folder / "model.json").read_text())
    meta["files"] = ["model.safetensors", "model.json", "model.onnx"]
    del meta["int8"]
    broken = ExportedModel(folder.name, folder, meta, meta["params"], meta["size_bytes"])
    result = add_int8(plan(), broken, student, load(DIGITS_TEST))
    assert result.data is None and not (folder / "model.int8.onnx").exists()
    written = json.loads((folder / "model.json").read_text())
    assert written["int8"]["error"].startswith("quantization failed")
    assert written["int8"]["served"] is False
    assert "model.int8.onnx" not in written["files"]
    assert int8_text(written["int8"]).startswith("int8: no int8 model (quantization failed")


def test_int8_is_never_served_where_the_api_serves_on_a_gpu(
    student: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Serving on cuda is PyTorch: the int8 graph is made and measured, never served. No
    # GPU here, and this tiny student's int8 graph is not faster anyway: the measured
    # verdict is taken as "served" so that the device rule alone decides.
    import worker.int8_export as int8_export

    real = int8_export.quantize_student

    def served_anyway(*args: Any, **kwargs: Any) -> Int8Result:
        result = real(*args, **kwargs)
        result.block.update(served=True, reason="within int8_max_drop and faster")
        return result

    monkeypatch.setattr(int8_export, "quantize_student", served_anyway)
    exported = export(student, tmp_path / "gpu")
    spec = ExportSpec(int8=True, calibration_samples=32)
    on_cpu = Int8Plan(spec, [DIGITS_TRAIN], load, seed=0)
    assert add_int8(on_cpu, exported, student, load(DIGITS_TEST)).block["served"] is True
    on_gpu = Int8Plan(spec, [DIGITS_TRAIN], load, seed=0, serving_device="cuda")
    block = add_int8(on_gpu, exported, student, load(DIGITS_TEST)).block
    assert block["served"] is False and "cuda" in block["reason"]
    assert (exported.folder / "model.int8.onnx").is_file()


def test_a_calibration_set_that_cannot_load_leaves_fp32_served(student: Trained, tmp_path: Path):
    def unreadable(ref: DatasetRef) -> InMemoryData:
        raise OSError("the store is gone")

    exported = export(student, tmp_path / "no-calibration")
    broken = Int8Plan(ExportSpec(int8=True), [DIGITS_TRAIN], unreadable, seed=0)
    block = add_int8(broken, exported, student, load(DIGITS_TEST)).block
    assert block["served"] is False and "calibration set not loaded (OSError)" in block["error"]
    assert not (exported.folder / "model.int8.onnx").exists()


def test_no_onnx_graph_means_no_int8_model(student: Trained, tmp_path: Path):
    folder = tmp_path / "no-onnx"
    exported = export_model(
        student.net,
        student.config,
        model_id="no-onnx",
        folder=folder,
        class_names=student.class_names,
        metrics={},
        job_id=None,
        name=None,
        onnx=False,
        time_backends=False,
    )
    block = add_int8(plan(), exported, student, load(DIGITS_TEST)).block
    assert block["error"] == "no ONNX graph to quantize: ONNX export was not requested"
    assert not (folder / "model.int8.onnx").exists()


def test_calibration_inputs_are_on_the_models_own_scale_and_shape():
    grey = InMemoryData(
        torch.full((4, 1, 8, 8), 255, dtype=torch.uint8), None, ["a"], 255.0, "grey"
    )
    rgb_01 = NetworkConfig("small_cnn", 2, 3, 16, scale=1.0)
    x = model_inputs(grey, rgb_01)
    assert x is not None and x.shape == (4, 3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=1e-6)
    colour = InMemoryData(torch.zeros(2, 3, 8, 8), None, ["a"], 1.0, "colour")
    assert model_inputs(colour, NetworkConfig("small_cnn", 2, 1, 8)) is None


def test_the_report_names_the_served_int8_backend():
    block = {
        "accuracy": 0.927,
        "fp32_accuracy": 0.93,
        "drop_points": 0.3,
        "batch_1_ms": 0.02,
        "batch_32_ms": 0.1,
        "fp32_batch_1_ms": 0.02,
        "fp32_batch_32_ms": 0.2,
        "speedup_batch_1": 1.0,
        "speedup_batch_32": 2.0,
        "served": True,
        "reason": "within int8_max_drop",
    }
    meta = {
        "files": ["model.onnx", "model.int8.onnx"],
        "int8": block,
        "backends": {"preferred": "onnx", "onnx": {"batch_1_ms": 0.02, "batch_32_ms": 0.2}},
    }
    assert serving_figures(meta, "auto") == {
        "backend": "onnx_int8",
        "precision": "int8",
        "latency_ms": 0.02,
        "batch_32_ms": 0.1,
    }
    assert serving_figures(meta, "onnx")["precision"] == "fp32"
    assert serving_figures(meta, "onnx")["backend"] == "onnx"
    # On a GPU the API serves PyTorch, fp32, whatever int8 says.
    meta["backends"]["torch"] = {"batch_1_ms": 0.3, "batch_32_ms": 0.9}
    on_gpu = serving_figures(meta, "auto", "cuda")
    assert on_gpu["backend"] == "torch" and on_gpu["precision"] == "fp32"
    text = int8_text(block)
    assert text.startswith("int8: accuracy 0.927 against fp32's 0.930 (-0.3 points)")
    assert "2.0x faster at batch 32" in text and text.endswith("served (within int8_max_drop).")


# --------------------------------------------------------------- the size search
def fp32_entry(index: int, candidate: int, params: int, accuracy: float, **extra: Any):
    return {
        "index": index,
        "candidate": candidate,
        "precision": "fp32",
        "params": params,
        "accuracy": accuracy,
        "skipped": None,
        **extra,
    }


def int8_block(accuracy: float, latency_ms: float, *, served: bool = True) -> dict[str, Any]:
    return {
        "accuracy": accuracy,
        "size_bytes": 10_000,
        "batch_1_ms": latency_ms,
        "served": served,
        "reason": "within" if served else "not faster at batch 32 (1 ms against 1 ms)",
    }


def test_a_wider_int8_student_wins_where_its_fp32_breaks_the_latency_budget():
    limits = Constraints(max_latency_ms=0.5)
    narrow = fp32_entry(0, 0, 4_700, 0.88, latency_ms=0.3)
    wide = fp32_entry(2, 1, 18_000, 0.93, latency_ms=0.8, skipped="latency_ms 0.8 > 0.5")
    entries = [
        narrow,
        int8_entry(narrow, int8_block(0.87, 0.2, served=False), index=1, constraints=limits),
        wide,
        int8_entry(wide, int8_block(0.928, 0.4), index=3, constraints=limits),
    ]
    assert entries[1]["skipped"].startswith("int8 not servable: not faster")
    assert entries[3]["skipped"] is None and entries[3]["rank_accuracy"] == 0.93
    chosen, _, met = choose_candidate(entries, limits)
    assert (chosen, met) == (3, True)
    block = int8_block(0.928, 0.4)
    assert int8_choice(entries, chosen, block) == (2, {**block, "served": True})


def test_with_a_floor_a_servable_int8_goes_first_among_equals():
    limits = Constraints(min_accuracy=0.9)
    small = fp32_entry(0, 0, 4_700, 0.95)
    entries = [small, int8_entry(small, int8_block(0.948, 0.1), index=1, constraints=limits)]
    assert choose_candidate(entries, limits)[0] == 1
    # An int8 variant under the floor leaves its fp32 sibling to serve, and says why.
    small = fp32_entry(0, 0, 4_700, 0.905)
    entries = [small, int8_entry(small, int8_block(0.899, 0.1), index=1, constraints=limits)]
    chosen, _, _ = choose_candidate(entries, limits)
    assert chosen == 0
    fp32, block = int8_choice(entries, chosen, int8_block(0.899, 0.1))
    assert fp32 == 0 and block["served"] is False
    assert block["reason"] == "the size search served fp32: accuracy 0.899 < min_accuracy 0.9"
    # Where the serve rule said no already, its reason stands.
    unservable = int8_block(0.899, 0.1, served=False)
    assert int8_choice(entries, chosen, unservable) == (0, unservable)


def test_an_int8_variant_over_a_size_budget_is_skipped():
    limits = Constraints(max_size_bytes=5_000)
    entry = fp32_entry(0, 0, 4_700, 0.95, size_bytes=20_000)
    variant = int8_entry(entry, int8_block(0.95, 0.1), index=1, constraints=limits)
    assert variant["skipped"] == "size_bytes 10000 > max_size_bytes 5000"


# ------------------------------------------------------------------- through a job
def test_a_train_job_that_asks_for_int8_records_and_reports_it(env):
    from tests.helpers import tiny_train_spec
    from tests.worker.jobrun import events, run

    spec = tiny_train_spec(epochs=2)
    spec["export"] = {"int8": True, "calibration_samples": 64}
    job = run(spec)
    assert job.state == "SUCCEEDED", job.error
    folder = Path(env["STILLHOUSE_ARTIFACT_DIR"]) / "models" / str(job.model_id)
    meta = json.loads((folder / "model.json").read_text())
    assert "model.int8.onnx" in meta["files"] and (folder / "model.int8.onnx").is_file()
    assert set(meta["int8"]) >= BLOCK_FIELDS
    assert meta["int8"]["calibration"] == {"samples": 64, "source": "digits/train"}
    # A train job has no teacher to compare: its report is the int8 comparison alone.
    assert job.report is not None and job.report["student"]["int8"] == meta["int8"]
    assert job.report["summary"] == int8_text(meta["int8"])
    logged = [e for e in events(job.id, "log") if e.get("stage") == "int8"]
    assert [e["message"] for e in logged] == [job.report["summary"]]
    assert logged[0]["served"] is meta["int8"]["served"]


def test_a_size_search_weighs_each_candidates_int8_variant(env):
    from tests.helpers import tiny_pipeline_spec
    from tests.worker.jobrun import run

    spec = tiny_pipeline_spec(
        seed=0,
        baseline=False,
        student={
            "candidates": [
                {"arch": "small_cnn", "width": 0.25},
                {"arch": "small_cnn", "width": 0.5},
            ],
            # Width 0.5 is about 78 kB of fp32 weights and 37 kB in int8.
            "constraints": {"max_size_bytes": 50_000},
        },
    )
    spec["export"] = {"int8": True, "int8_max_drop": 100, "calibration_samples": 32}
    job = run(spec)
    assert job.state == "SUCCEEDED", job.error
    report = job.report
    # One entry per candidate (API.md), its int8 variant inside it.
    entries = report["candidates"]
    assert [e["index"] for e in entries] == [0, 1]
    assert all("precision" not in e and "rank_accuracy" not in e for e in entries)
    for entry in entries:
        assert entry["int8"]["size_bytes"] < entry["size_bytes"]
    # Width 0.5 breaks the size budget in fp32 but not in int8: trained for its int8 form.
    assert entries[1]["skipped"].startswith("size_bytes ") and entries[1]["accuracy"] > 0
    assert not (entries[1]["int8"]["skipped"] or "").startswith("size_bytes")
    chosen = entries[report["chosen"]]
    precision = report["chosen_precision"]
    assert precision in ("fp32", "int8")
    # The served precision is the chosen one, and the report's student is that network
    # measured in fp32, as the teacher is.
    assert report["student"]["int8"]["served"] is (precision == "int8")
    assert report["student"]["serving"]["precision"] == precision
    assert report["student"]["width"] == chosen["width"]
    assert "precision" not in report["student"]
    assert "int8" in report["summary"]
