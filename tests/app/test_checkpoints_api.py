"""POST/GET/DELETE /api/v1/checkpoints on both backends: real small_cnn and torchvision
state dicts are accepted and load in the worker; files that would not load, and files
that are not safetensors at all, are refused with the reason."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save, save_file

from app.core.archs import SmallCNN
from app.core.network import NetworkConfig, build_network
from worker.build import load_weights

URL = "/api/v1/checkpoints"


def as_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in state.items()})


def small_cnn_state(num_classes: int = 5, in_channels: int = 3, width: float = 1.0) -> dict:
    torch.manual_seed(0)
    return SmallCNN(num_classes, in_channels, width).state_dict()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real torchvision resnet18 state dict (10 classes) written by save_file, made once."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors"
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(path))
    return path


def upload(client, headers, content: bytes, filename: str = "w.safetensors", **fields: Any):
    data = {k: str(v) for k, v in fields.items()}
    return client.post(URL, files={"file": (filename, content)}, data=data, headers=headers)


def assert_problem(r, status: int, field: str, *needles: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json().get("errors", [])
    assert any(e["field"] == field for e in errors), errors
    message = " | ".join(e["message"] for e in errors)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def loads_in_worker(settings, body: dict[str, Any], image_size: int = 16) -> None:
    """What worker.build.build_model does with a checkpoint teacher: build, then load."""
    config = NetworkConfig(
        arch=body["arch"],
        num_classes=body["num_classes"],
        in_channels=body["in_channels"],
        image_size=image_size,
        width=body["width"],
    )
    net = build_network(config)
    path = Path(settings.artifact_dir) / "checkpoints" / f"{body['id']}.safetensors"
    load_weights(net, load_file(str(path)), what="test")


# ------------------------------------------------------------------------- accepted
def test_small_cnn_state_dict_infers_width_and_channels(client, alice, settings):
    state = small_cnn_state(num_classes=5, in_channels=1, width=0.5)
    r = upload(client, alice, as_bytes(state), arch="small_cnn", num_classes=5)
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["Location"] == f"{URL}/{body['id']}"
    assert (body["arch"], body["num_classes"], body["in_channels"], body["width"]) == (
        "small_cnn",
        5,
        1,
        0.5,
    )
    assert body["meta"]["layout"] == "backbone"
    assert body["meta"]["params"] == sum(
        v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")
    )
    assert body["name"] == "w.safetensors"
    loads_in_worker(settings, body)
    # The stored file is the upload, byte for byte.
    stored = Path(settings.artifact_dir) / "checkpoints" / f"{body['id']}.safetensors"
    assert load_file(str(stored)).keys() == state.keys()


def test_torchvision_resnet18_state_dict(client, alice, settings, resnet18_file):
    content = resnet18_file.read_bytes()
    r = upload(
        client,
        alice,
        content,
        filename="resnet18.safetensors",
        arch="resnet18",
        num_classes=10,
        name="imagenet-ish",
        mean="0.485, 0.456, 0.406",
        std="[0.229, 0.224, 0.225]",
        input_size=64,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["in_channels"], body["width"], body["input_size"]) == (3, 1.0, 64)
    assert body["mean"] == [0.485, 0.456, 0.406] and body["std"] == [0.229, 0.224, 0.225]
    assert body["name"] == "imagenet-ish"
    assert body["size_bytes"] == len(content)
    loads_in_worker(settings, body, image_size=32)

    # A wrong number of classes is named, with the likely fix.
    r = upload(client, alice, content, arch="resnet18", num_classes=7)
    assert_problem(
        r, 422, "file", "fc.weight: expected [7, 512], got [10, 512]", "is num_classes 10?"
    )
    # The right file for another architecture.
    r = upload(client, alice, content, arch="resnet34", num_classes=10)
    assert_problem(r, 422, "file", "does not fit resnet34", "missing (e.g. layer1.2.")


def test_network_layout_keeps_its_normalisation(client, alice, settings):
    config = NetworkConfig(
        "small_cnn", 3, 3, 16, width=0.25, mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7]
    )
    state = build_network(config).state_dict()
    assert any(k.startswith("backbone.") for k in state)
    r = upload(client, alice, as_bytes(state), arch="small_cnn", num_classes=3)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["meta"]["layout"] == "network"
    assert (body["width"], body["in_channels"]) == (0.25, 3)
    assert body["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert body["std"] == pytest.approx([0.5, 0.6, 0.7])
    loads_in_worker(settings, body)


# ------------------------------------------------------------------------- refused
def test_refused_uploads_name_the_problem(client, alice, settings):
    good = small_cnn_state(num_classes=5)
    pickled = io.BytesIO()
    torch.save(good, pickled)
    cases: list[tuple[str, bytes, dict[str, Any], str, tuple[str, ...]]] = [
        (
            "wrong head",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 7},
            "file",
            ("fc.weight: expected [7, 64], got [5, 64]", "is num_classes 5?"),
        ),
        (
            "wrong width",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "width": 0.5},
            "file",
            ("width=0.5", "stage1.0.weight: expected [8, 3, 3, 3], got [16, 3, 3, 3]"),
        ),
        (
            "missing tensor",
            as_bytes({k: v for k, v in good.items() if k != "fc.bias"}),
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("1 tensor(s) missing (e.g. fc.bias)",),
        ),
        (
            "DataParallel names",
            as_bytes({f"module.{k}": v for k, v in good.items()}),
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("unexpected (e.g. module.", "model.module.state_dict()"),
        ),
        (
            "integer weights",
            as_bytes({**good, "fc.weight": good["fc.weight"].to(torch.int32)}),
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("fc.weight: expected a float tensor, got dtype I32",),
        ),
        (
            "unknown arch",
            as_bytes(good),
            {"arch": "resnet19", "num_classes": 5},
            "arch",
            ("unknown arch 'resnet19'", "did you mean", "resnet18"),
        ),
        (
            "nonsense arch",
            as_bytes(good),
            {"arch": "zzzz", "num_classes": 5},
            "arch",
            ("known archs include small_cnn, resnet18",),
        ),
        (
            "not safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" * 4,
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("not a readable safetensors file",),
        ),
        (
            "truncated",
            as_bytes(good)[:-100],
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("not a readable safetensors file",),
        ),
        (
            "pickle",
            pickled.getvalue(),
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("pickle (torch.save) file, not safetensors",),
        ),
        (
            "old-style pickle",
            b"\x80\x02}q\x00." + bytes(100),
            {"arch": "small_cnn", "num_classes": 5},
            "file",
            ("pickle",),
        ),
        (
            "no classes",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 0},
            "num_classes",
            ("greater than or equal to 1",),
        ),
        (
            "missing arch",
            as_bytes(good),
            {"num_classes": 5},
            "arch",
            ("Field required",),
        ),
        (
            "width for resnet",
            as_bytes(good),
            {"arch": "resnet18", "num_classes": 5, "width": 0.5},
            "width",
            ("small_cnn only",),
        ),
        (
            "channels disagree",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "in_channels": 1},
            "in_channels",
            ("first convolution has 3 channels, not 1",),
        ),
        (
            "bad channels",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "in_channels": 2},
            "in_channels",
            ("must be 1 or 3",),
        ),
        (
            "mean per channel",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "mean": "0.5", "std": "0.2"},
            "mean",
            ("expected 3 value(s)",),
        ),
        (
            "mean alone",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "mean": "0.5,0.5,0.5"},
            "std",
            ("missing: mean was given",),
        ),
        (
            "zero std",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "mean": "0,0,0", "std": "1,0,1"},
            "std",
            ("must be > 0",),
        ),
        (
            "unknown field",
            as_bytes(good),
            {"arch": "small_cnn", "num_classes": 5, "weights": "IMAGENET1K_V1"},
            "weights",
            ("unknown field",),
        ),
    ]
    for case, content, fields, field, needles in cases:
        r = upload(client, alice, content, **fields)
        assert r.status_code == 422, f"{case}: {r.status_code} {r.text}"
        assert_problem(r, 422, field, *needles)
    assert client.get(URL, headers=alice).json()["checkpoints"] == []
    folder = Path(settings.artifact_dir) / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_over_the_limit_answers_413(client, alice, settings, monkeypatch):
    from app.config import get_settings

    monkeypatch.setenv("STILLHOUSE_MAX_UPLOAD_BYTES", "10000")
    get_settings.cache_clear()
    content = as_bytes(small_cnn_state())  # about 300 kB
    r = upload(client, alice, content, arch="small_cnn", num_classes=5)
    assert_problem(r, 413, "file", "larger than 10000 bytes")
    folder = Path(settings.artifact_dir) / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []


# ---------------------------------------------------------- list, get, delete, owners
def test_list_get_delete_and_owners(client, alice, bob, settings):
    content = as_bytes(small_cnn_state(num_classes=3, width=0.25))
    ids = []
    for i in range(3):
        r = upload(client, alice, content, arch="small_cnn", num_classes=3, name=f"c{i}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    page = client.get(URL, params={"page_size": 2}, headers=alice).json()
    assert [c["id"] for c in page["checkpoints"]] == ids[::-1][:2]
    rest = client.get(
        URL, params={"page_size": 2, "page_token": page["next_page_token"]}, headers=alice
    ).json()
    assert [c["id"] for c in rest["checkpoints"]] == [ids[0]]
    assert rest["next_page_token"] is None
    assert client.get(f"{URL}/{ids[0]}", headers=alice).json()["name"] == "c0"

    assert client.get(URL, headers=bob).json()["checkpoints"] == []
    assert client.get(f"{URL}/{ids[0]}", headers=bob).status_code == 404
    assert client.delete(f"{URL}/{ids[0]}", headers=bob).status_code == 404

    path = Path(settings.artifact_dir) / "checkpoints" / f"{ids[0]}.safetensors"
    assert path.exists()
    assert client.delete(f"{URL}/{ids[0]}", headers=alice).status_code == 204
    assert not path.exists()
    assert client.get(f"{URL}/{ids[0]}", headers=alice).status_code == 404


def test_a_teacher_in_use_cannot_be_deleted(client, alice):
    content = as_bytes(small_cnn_state(num_classes=10, in_channels=1, width=0.25))
    r = upload(client, alice, content, arch="small_cnn", num_classes=10)
    assert r.status_code == 201, r.text
    ckpt = r.json()["id"]
    spec = {
        "kind": "distill",
        "teacher": {"source": "checkpoint", "checkpoint_id": ckpt},
        "student": {"arch": "small_cnn", "width": 0.25},
        "distill": {"dataset": {"name": "digits"}, "epochs": 1, "min_steps": 0},
    }
    r = client.post("/api/v1/jobs", json=spec, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    r = client.delete(f"{URL}/{ckpt}", headers=alice)
    assert r.status_code == 409 and job in r.json()["detail"]
    assert client.post(f"/api/v1/jobs/{job}:cancel", headers=alice).status_code == 202
    assert client.delete(f"{URL}/{ckpt}", headers=alice).status_code == 204


def test_absurd_channel_counts_are_refused_not_built():
    # Widths are read from the file's shapes; one of 2**40 channels overflowed when the
    # architecture was built to compare with (a RuntimeError, so a 500).
    from app.schemas.checkpoint import CheckpointForm
    from app.services.checkpoints import FileContents, TensorInfo, check_fit
    from app.services.errors import InvalidError

    contents = FileContents(
        {
            "backbone.stage1.0.weight": TensorInfo("F32", (4, 1, 3, 3)),
            "backbone.stage3.0.weight": TensorInfo("F32", (2**40, 1, 3, 3)),
        },
        None,
        None,
    )
    with pytest.raises(InvalidError) as refused:
        check_fit(CheckpointForm(arch="small_cnn", num_classes=3), contents)
    assert [e["field"] for e in refused.value.errors or []] == ["file"]
