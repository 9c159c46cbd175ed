"""Regression targets (L_T = E||g(x) - y||^2 with real-valued y): upload, train, transfer,
serve."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.worker.jobrun import run


def regression_npz(targets: int = 2, **extra) -> bytes:
    images = (load_digits().images[:400] / 16.0).astype(np.float32)
    # Learnable targets: the image's mean intensity and its share of bright pixels.
    y = np.stack([images.mean(axis=(1, 2)), (images > 0.5).mean(axis=(1, 2))], axis=1)
    y = y[:, :targets] if targets > 1 else y[:, 0]
    buf = io.BytesIO()
    np.savez(buf, x=images, y=y.astype(np.float32), **extra)
    return buf.getvalue()


def upload(client, headers, body: bytes):
    return client.post(
        "/api/v1/datasets",
        headers=headers,
        files={"file": ("reg.npz", body, "application/octet-stream")},
    )


@pytest.fixture
def regression_set(client, alice) -> str:
    r = upload(client, alice, regression_npz())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["task"] == "regression" and body["targets"] == 2 and body["classes"] == []
    return body["id"]


def test_upload_checks_regression_targets(client, alice):
    assert upload(client, alice, regression_npz(targets=1)).json()["targets"] == 1
    bad_values = io.BytesIO()
    np.savez(bad_values, x=np.zeros((10, 8, 8), np.float32), y=np.full(10, np.nan, np.float32))
    r = upload(client, alice, bad_values.getvalue())
    assert r.status_code == 422 and "NaN" in r.json()["detail"]
    r = upload(client, alice, regression_npz(class_names=np.array(["a", "b"])))
    assert r.status_code == 422 and "class_names" in r.json()["detail"]
    bad_shape = io.BytesIO()
    np.savez(bad_shape, x=np.zeros((10, 8, 8), np.float32), y=np.zeros((10, 2, 3), np.float32))
    assert upload(client, alice, bad_shape.getvalue()).status_code == 422


def test_train_and_serve_a_regression_model(client, alice, regression_set):
    job = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.5},
            "train": {
                "dataset": {"id": regression_set},
                "epochs": 6,
                "min_steps": 0,
                "optimizer": {"lr": 3e-3},
            },
        }
    )
    assert job.state == "SUCCEEDED", job.error
    assert set(job.metrics) >= {"mse", "mae"} and "accuracy" not in job.metrics
    # Far better than predicting zeros (the targets are ~0.3 and ~0.3).
    assert job.metrics["mae"] < 0.15
    model = client.get(f"/api/v1/models/{job.model_id}", headers=alice).json()
    assert model["task"] == "regression" and model["classes"] == ["target_0", "target_1"]
    inputs = (load_digits().images[:3] / 16.0).tolist()
    r = client.post(
        f"/api/v1/models/{job.model_id}/predict", headers=alice, json={"inputs": inputs}
    )
    assert r.status_code == 200, r.text
    values = [p["values"] for p in r.json()["predictions"]]
    assert len(values) == 3 and all(len(v) == 2 for v in values)
    meta = client.get(f"/v2/models/{job.model_id}", headers=alice).json()
    assert [o["name"] for o in meta["outputs"]] == ["logits"]
    infer = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 1, 8, 8],
                "data": np.zeros(64).tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    r = client.post(f"/v2/models/{job.model_id}/infer", headers=alice, json=infer)
    assert r.status_code == 400 and "logits" in r.json()["error"]


@pytest.mark.parametrize("strategy", ["distill_then_finetune", "finetune_then_distill"])
def test_transfer_a_classification_teacher_to_a_regression_target(env, regression_set, strategy):
    job = run(
        {
            "kind": "pipeline",
            "strategy": strategy,
            "baseline": True,
            "teacher": {
                "source": "train",
                "arch": "small_cnn",
                "train": {"dataset": {"name": "digits"}, "epochs": 2, "min_steps": 0},
            },
            "student": {"arch": "small_cnn", "width": 0.25},
            "distill": {
                "dataset": {"name": "digits", "labels": False},
                "epochs": 2,
                "min_steps": 0,
                "loss": {"type": "mse"},
            },
            "finetune": {"dataset": {"id": regression_set}, "epochs": 4, "min_steps": 0},
        }
    )
    assert job.state == "SUCCEEDED", job.error
    student = job.report["student"]
    assert student["accuracy"] is None and student["mse"] >= 0
    assert job.report["baseline"]["mse"] >= 0
    # Adapted to the targets (first, or for the report), it is measured on them like the
    # student; the summary compares squared errors.
    assert job.report["teacher"]["mse"] >= 0
    assert "mse" in job.report["summary"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"finetune": {"loss": "cross_entropy"}}, "finetune.loss"),
        ({"finetune": {"kd_weight": 0.5}}, "finetune.kd_weight"),
        ({"finetune": {"dataset": {"classes": [0]}}}, "finetune.dataset.classes"),
        ({"distill": {"dataset": {"name": "digits"}, "loss": {"type": "kl"}}}, "distill.loss.type"),
        # int8 is served within an accuracy budget; regression targets have no accuracy.
        ({"export": {"int8": True}}, "export.int8"),
        (
            {
                "student": {
                    "candidates": [{"arch": "small_cnn"}],
                    "constraints": {"min_accuracy": 0.9},
                }
            },
            "student.constraints.min_accuracy",
        ),
    ],
)
def test_classification_only_options_are_refused_for_regression(
    client, alice, regression_set, change, field
):
    spec = {
        "kind": "pipeline",
        "strategy": "finetune_then_distill",
        "teacher": {
            "source": "train",
            "arch": "small_cnn",
            "train": {"dataset": {"name": "digits"}},
        },
        "student": {"arch": "small_cnn", "width": 0.25},
        "distill": {"dataset": {"name": "digits", "labels": False}, "loss": {"type": "mse"}},
        "finetune": {"dataset": {"id": regression_set}},
    }
    for key, value in copy.deepcopy(change).items():
        if key == "finetune":
            dataset = {**spec["finetune"]["dataset"], **value.pop("dataset", {})}
            spec["finetune"] = {**spec["finetune"], **value, "dataset": dataset}
        else:
            spec[key] = value
    r = client.post("/api/v1/jobs", headers=alice, json=spec)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
