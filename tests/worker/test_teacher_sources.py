"""Each teacher source: train (see test_pipeline), torchvision (from the hub cache),
checkpoint (an uploaded safetensors file) and model (an earlier job's student)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save

from app.config import get_settings
from app.core.network import NetworkConfig, build_network
from tests.worker.jobrun import run

STUDENT = {"arch": "small_cnn", "width": 0.25}
DIGITS_FEW = {"name": "digits", "classes": [0, 1, 2], "samples_per_class": 12}
TARGET = {"name": "digits", "classes": [3, 4], "samples_per_class": 8}


def pipeline(teacher: dict) -> dict:
    return {
        "kind": "pipeline",
        "teacher": teacher,
        "student": STUDENT,
        "distill": {"dataset": {**DIGITS_FEW, "labels": False}, "epochs": 1, "min_steps": 0},
        "finetune": {"dataset": TARGET, "epochs": 2, "min_steps": 0},
    }


@pytest.fixture
def torch_home(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("STILLHOUSE_TORCH_HOME", str(home))
    get_settings.cache_clear()
    return home


def test_torchvision_teacher_from_the_hub_cache(torch_home: Path):
    weights = torchvision.models.get_model_weights("mobilenet_v3_small")["IMAGENET1K_V1"]
    cache = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    # A file the test writes stands in for the downloaded weights (no network here).
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cache)
    job = run(
        pipeline(
            {"source": "torchvision", "arch": "mobilenet_v3_small", "weights": "IMAGENET1K_V1"}
        )
    )
    assert job.state == "SUCCEEDED", job.error
    assert job.report["teacher"]["arch"] == "mobilenet_v3_small"
    assert job.report["teacher"]["params"] > 1_000_000


def test_torchvision_teacher_without_cache_or_network_names_the_file(torch_home: Path):
    job = run(pipeline({"source": "torchvision", "arch": "resnet18", "weights": "IMAGENET1K_V1"}))
    assert job.state == "FAILED"
    assert job.error["code"] == "weights_unavailable"
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in job.error["message"]


def _upload(client, headers, state: dict[str, torch.Tensor], **fields) -> str:
    files = {"file": ("teacher.safetensors", io.BytesIO(save(state)), "application/octet-stream")}
    r = client.post("/api/v1/checkpoints", headers=headers, files=files, data=fields)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_checkpoint_teacher_small_cnn_network_state(env, client, alice):
    net = build_network(NetworkConfig("small_cnn", 3, 1, 8, width=1.0))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    ckpt = _upload(
        client, alice, state, arch="small_cnn", num_classes="3", width="1.0", in_channels="1"
    )
    job = run(pipeline({"source": "checkpoint", "checkpoint_id": ckpt}))
    assert job.state == "SUCCEEDED", job.error
    # The report measures the teacher fine-tuned on the target's two classes: the
    # checkpoint's network with a two-class head.
    on_target = build_network(NetworkConfig("small_cnn", 2, 1, 8, width=1.0))
    assert job.report["teacher"]["params"] == sum(p.numel() for p in on_target.parameters())


def test_checkpoint_teacher_bare_torchvision_state(env, client, alice):
    backbone = torchvision.models.resnet18(num_classes=3)
    ckpt = _upload(client, alice, backbone.state_dict(), arch="resnet18", num_classes="3")
    job = run(pipeline({"source": "checkpoint", "checkpoint_id": ckpt}))
    assert job.state == "SUCCEEDED", job.error
    assert job.report["teacher"]["arch"] == "resnet18"


def test_model_teacher_from_an_earlier_job(env):
    first = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 1.0},
            "train": {"dataset": DIGITS_FEW, "epochs": 2, "min_steps": 0},
        }
    )
    assert first.state == "SUCCEEDED"
    job = run(pipeline({"source": "model", "model_id": first.model_id}))
    assert job.state == "SUCCEEDED", job.error
    assert job.report["teacher"]["arch"] == "small_cnn"


def test_another_owners_model_is_not_a_teacher(env, client, alice, bob):
    first = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.25},
            "train": {"dataset": DIGITS_FEW, "epochs": 1, "min_steps": 0},
        },
        owner="alice",
    )
    r = client.post(
        "/api/v1/jobs", headers=bob, json=pipeline({"source": "model", "model_id": first.model_id})
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "teacher.model_id"


# ----------------------------------------------------------------- students, too
def test_students_start_from_a_model_or_a_checkpoint(env, client, alice):
    """A student may start from an earlier job's model or an uploaded checkpoint, in a
    distill job and among a pipeline's size-search candidates (it is distilled from
    there)."""
    first = run(
        {
            "kind": "train",
            "model": {"arch": "small_cnn", "width": 0.25},
            "train": {"dataset": DIGITS_FEW, "epochs": 1, "min_steps": 0},
        }
    )
    assert first.state == "SUCCEEDED", first.error
    net = build_network(NetworkConfig("small_cnn", 5, 1, 8, width=0.5))
    ckpt = _upload(
        client,
        alice,
        {k: v.contiguous() for k, v in net.state_dict().items()},
        arch="small_cnn",
        num_classes="5",
        width="0.5",
        in_channels="1",
    )
    job = run(
        {
            "kind": "distill",
            "teacher": {"source": "model", "model_id": first.model_id},
            "student": {"source": "model", "model_id": first.model_id},
            "distill": {"dataset": {**DIGITS_FEW, "labels": False}, "epochs": 1, "min_steps": 0},
        }
    )
    assert job.state == "SUCCEEDED", job.error
    assert job.report["student"]["params"] == job.report["teacher"]["params"]
    spec = pipeline({"source": "model", "model_id": first.model_id})
    spec["student"] = {
        "candidates": [
            {"source": "checkpoint", "checkpoint_id": ckpt},
            {"source": "model", "model_id": first.model_id},
        ],
        "constraints": {"max_params": 10**6},
    }
    job = run(spec)
    assert job.state == "SUCCEEDED", job.error
    assert [c["skipped"] for c in job.report["candidates"]] == [None, None]
    assert job.report["candidates"][0]["width"] == 0.5


def test_a_torchvision_candidate_is_checked_against_a_budget_from_the_hub_cache(
    torch_home: Path,
):
    weights = torchvision.models.get_model_weights("mobilenet_v3_small")["IMAGENET1K_V1"]
    cache = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cache)
    teacher = {
        "source": "train",
        "arch": "small_cnn",
        "train": {"dataset": DIGITS_FEW, "epochs": 1, "min_steps": 0},
    }
    spec = pipeline(teacher)
    spec["student"] = {
        "candidates": [
            {"source": "torchvision", "arch": "mobilenet_v3_small", "weights": "IMAGENET1K_V1"},
            STUDENT,
        ],
        "constraints": {"max_params": 100_000},
    }
    job = run(spec)
    assert job.state == "SUCCEEDED", job.error
    skipped = job.report["candidates"][0]["skipped"]
    assert skipped is not None and skipped.startswith("params "), skipped
    assert job.report["chosen"] == 1
