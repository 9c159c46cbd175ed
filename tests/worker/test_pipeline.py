"""The pipeline, distill and finetune kinds, run through the real queue and worker."""

from __future__ import annotations

import pytest

from app.db import get_sessionmaker
from app.models import TrainedModel
from tests.helpers import tiny_pipeline_spec, tiny_teacher_spec
from tests.worker.jobrun import events, run

TEACHER = tiny_teacher_spec(width=1.0)


def spec(**changes) -> dict:
    return tiny_pipeline_spec(seed=0, teacher_width=1.0, finetune_batch_size=16, **changes)


def stages_run(job_id: str) -> list[str]:
    return [e["stage"] for e in events(job_id, "progress") if e.get("epoch") == 0]


@pytest.mark.parametrize("strategy", ["distill_then_finetune", "finetune_then_distill"])
def test_pipeline_strategies(env, strategy: str):
    job = run(spec(strategy=strategy, baseline=True))
    assert job.state == "SUCCEEDED", job.error
    report = job.report
    assert report["strategy"] == strategy
    student, teacher = report["student"], report["teacher"]
    assert student["arch"] == "small_cnn" and student["params"] < teacher["params"]
    assert report["compression"] == pytest.approx(teacher["params"] / student["params"], rel=1e-3)
    assert report["speedup"] == pytest.approx(
        teacher["latency_ms"] / student["latency_ms"], rel=1e-2
    )
    assert 0.0 <= student["accuracy"] <= 1.0
    assert report["baseline"]["params"] == student["params"]
    assert "gain_over_baseline" in report
    assert job.model_id is not None and job.metrics["accuracy"] == student["accuracy"]
    # The report's size is the served file's, as /api/v1/models says it.
    with get_sessionmaker()() as session:
        model = session.get(TrainedModel, job.model_id)
        assert model is not None and student["size_bytes"] == model.size_bytes
    # The served backend's own latency, measured at export, beside the eager figures.
    assert student["serving"]["backend"] in ("onnx", "torch")
    assert student["serving"]["latency_ms"] > 0
    # The teacher is measured on the target's classes: fine-tuned there first
    # (finetune_then_distill), or a copy fine-tuned for the report after the student.
    assert teacher["fine_tuned_on_target"] is True
    # Each stage's start event says what the defaults chose on these grey digits: crops
    # for the teacher, on its source task and adapted to the target; none for the
    # student's fine-tuning and the scratch baseline.
    starts = {e["stage"]: e["message"] for e in events(job.id, "progress") if e.get("epoch") == 0}
    assert "augment crop" in starts["teacher"] and "augment crop" in starts["teacher_finetune"]
    assert "augment none" in starts["finetune"] and "augment none" in starts["baseline"]
    if strategy == "distill_then_finetune":
        assert teacher["accuracy"] is not None
        assert stages_run(job.id) == [
            "teacher",
            "distill",
            "finetune",
            "teacher_finetune",
            "baseline",
        ]
        assert job.report["summary"].startswith("student small_cnn w0.25")
    else:
        assert teacher["accuracy"] is not None
        assert stages_run(job.id) == [
            "teacher",
            "teacher_finetune",
            "distill",
            "finetune",
            "baseline",
        ]


def test_a_teacher_not_fine_tuned_on_the_target_says_why(env):
    job = run(spec(teacher_on_target=False, baseline=False, strategy="distill_then_finetune"))
    assert job.state == "SUCCEEDED", job.error
    teacher = job.report["teacher"]
    assert teacher["fine_tuned_on_target"] is False and teacher["accuracy"] is None
    assert "not fine-tuned on the target (teacher_on_target is false)" in teacher["accuracy_note"]
    assert stages_run(job.id) == ["teacher", "distill", "finetune"]
    assert "not fine-tuned on the target" in job.report["summary"]


def test_same_spec_and_seed_reproduce_the_same_accuracy(env):
    first = run(spec())
    second = run(spec())
    assert first.state == second.state == "SUCCEEDED"
    assert first.metrics["accuracy"] == second.metrics["accuracy"]
    assert first.metrics["loss"] == second.metrics["loss"]


@pytest.mark.parametrize(
    ("loss", "outputs", "augment"),
    [
        ({"type": "mse"}, "cache", "none"),
        ({"type": "kl", "temperature": 2.0, "alpha": 0.5}, "live", "flip"),
        ({"type": "hint"}, "views", "flip_crop"),
        ({"type": "hint", "student_layer": "backbone.stage3"}, "live", "none"),
    ],
)
def test_distill_losses_and_teacher_output_modes(env, loss, outputs, augment):
    distill = {
        "dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
        "loss": loss,
        "epochs": 2,
        "min_steps": 0,
        "teacher_outputs": outputs,
        "augment": augment,
        "teacher_views": 2,
    }
    job = run(
        {
            "kind": "distill",
            "teacher": TEACHER,
            "student": {"arch": "small_cnn", "width": 0.25},
            "distill": distill,
        }
    )
    assert job.state == "SUCCEEDED", job.error
    logs = " ".join(
        e["message"] for e in events(job.id, "log") + events(job.id, "progress") if "message" in e
    )
    assert f"teacher outputs: {outputs}" in logs
    metric = events(job.id, "metric")[-1]
    assert metric["stage"] == "distill" and 0.0 <= metric["val_agreement"] <= 1.0
    # Same classes as the teacher: the student is evaluated and reported as such.
    assert job.metrics["accuracy"] is not None
    assert job.report["student"]["accuracy"] == job.metrics["accuracy"]


def test_hint_from_a_resnet_teacher_into_small_cnn(env):
    job = run(
        {
            "kind": "distill",
            "teacher": {
                "source": "train",
                "arch": "resnet18",
                "train": {
                    "dataset": {"name": "digits", "classes": [0, 1], "samples_per_class": 16},
                    "epochs": 1,
                    "min_steps": 0,
                },
            },
            "student": {"arch": "small_cnn", "width": 0.25},
            "distill": {
                "dataset": {"name": "digits", "classes": [0, 1], "samples_per_class": 16},
                "loss": {"type": "hint"},
                "epochs": 1,
                "min_steps": 0,
            },
        }
    )
    assert job.state == "SUCCEEDED", job.error
    assert job.report["compression"] > 100


def test_finetune_kind_with_kd_and_frozen_backbone(env):
    base = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.5},
            "train": {
                "dataset": {"name": "digits", "classes": [0, 1, 2]},
                "epochs": 2,
                "min_steps": 0,
            },
        }
    )
    assert base.state == "SUCCEEDED"
    teacher = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 1.0},
            "train": {
                "dataset": {"name": "digits", "classes": [3, 4]},
                "epochs": 2,
                "min_steps": 0,
            },
        }
    )
    job = run(
        {
            "kind": "finetune",
            "model": {"source": "model", "model_id": base.model_id},
            "teacher": {"source": "model", "model_id": teacher.model_id},
            "finetune": {
                "dataset": {"name": "digits", "classes": [3, 4], "samples_per_class": 8},
                "epochs": 3,
                "min_steps": 0,
                "kd_weight": 0.5,
                "freeze_backbone_epochs": 2,
            },
        }
    )
    assert job.state == "SUCCEEDED", job.error
    history = [e for e in events(job.id, "metric") if e["stage"] == "finetune"]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert job.metrics["accuracy"] is not None


def test_size_search_skips_over_budget_and_picks_smallest_above_floor(env, client, alice):
    candidates = [
        {"arch": "small_cnn", "width": 0.25},
        {"arch": "small_cnn", "width": 0.5},
        {"arch": "small_cnn", "width": 4.0},
    ]
    job = run(
        spec(
            student={
                "candidates": candidates,
                "constraints": {"max_params": 100_000, "min_accuracy": 0.0},
            }
        )
    )
    assert job.state == "SUCCEEDED", job.error
    report = job.report
    entries = report["candidates"]
    assert [e["index"] for e in entries] == [0, 1, 2]
    assert (
        entries[2]["skipped"].startswith("params ") and "max_params 100000" in entries[2]["skipped"]
    )
    assert entries[0]["skipped"] is None and entries[1]["skipped"] is None
    assert report["chosen"] == 0 and report["constraints_met"] is True
    assert report["student"]["params"] == entries[0]["params"]
    # The size-search stages were run once per trained candidate only.
    assert "distill.c2" not in stages_run(job.id)
    r = client.get(f"/api/v1/jobs/{job.id}/plots/pareto.png", headers=alice)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    r = client.get(f"/api/v1/jobs/{job.id}/plots/learning_curves.svg", headers=alice)
    assert r.status_code == 200 and b"<svg" in r.content


def test_unreachable_accuracy_floor_serves_the_best_and_says_so(env):
    job = run(
        spec(
            student={
                "candidates": [
                    {"arch": "small_cnn", "width": 0.25},
                    {"arch": "small_cnn", "width": 0.5},
                ],
                "constraints": {"min_accuracy": 1.0},
            }
        )
    )
    # Three epochs on ten shots do not reach 100% (deterministic: the seed is fixed).
    assert job.state == "SUCCEEDED", job.error
    report = job.report
    assert report["constraints_met"] is False
    assert "no candidate reached min_accuracy 1.0" in report["chosen_reason"]
    best = max(report["candidates"], key=lambda e: e["accuracy"])
    assert report["chosen"] == best["index"] and best["skipped"] is None
    others = [e for e in report["candidates"] if e["index"] != best["index"]]
    assert all(e["skipped"].startswith("accuracy ") for e in others)


def test_eval_every_and_bf16_precision_on_cpu(env):
    job = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.25},
            "train": {
                "dataset": {"name": "digits", "classes": [0, 1]},
                "epochs": 5,
                "min_steps": 0,
                "eval_every": 2,
                "precision": "bf16",
            },
        }
    )
    assert job.state == "SUCCEEDED", job.error
    metrics = [e for e in events(job.id, "metric") if e["stage"] == "train"]
    evaluated = [e["epoch"] for e in metrics if "val_accuracy" in e]
    # Every second epoch, and always the last.
    assert evaluated == [2, 4, 5]
