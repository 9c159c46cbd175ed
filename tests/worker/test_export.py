"""Exported artifacts: safetensors + model.json + model.onnx, checked and timed.

The ONNX graph must agree with PyTorch, take any batch size, and never be kept when it
disagrees; a network the exporter cannot handle still exports (PyTorch serving), with
model.json saying why there is no ONNX file.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from app.core.network import Network, NetworkConfig, build_network
from worker.export import (
    OnnxMismatchError,
    check_onnx,
    export_model,
    onnx_bytes_of,
    random_inputs,
)


def small_config(**overrides) -> NetworkConfig:
    values = {
        "arch": "small_cnn",
        "num_classes": 4,
        "in_channels": 1,
        "image_size": 8,
        "width": 0.25,
        "scale": 255.0,
        "mean": [0.3],
        "std": [0.4],
    }
    values.update(overrides)
    return NetworkConfig(**values)


def export(net: Network, config: NetworkConfig, folder, **kwargs):
    return export_model(
        net,
        config,
        model_id=folder.name,
        folder=folder,
        class_names=[f"c{i}" for i in range(config.num_classes)],
        metrics={"accuracy": 0.5},
        job_id="job-1",
        name="test",
        **kwargs,
    )


def test_export_writes_all_three_files_and_records_them(tmp_path):
    torch.manual_seed(0)
    config = small_config()
    net = build_network(config).eval()
    exported = export(net, config, tmp_path / "m1")
    meta = json.loads((tmp_path / "m1" / "model.json").read_text())
    assert meta == exported.meta
    assert meta["files"] == ["model.safetensors", "model.json", "model.onnx"]
    for name in meta["files"]:
        assert (tmp_path / "m1" / name).is_file()
    assert meta["onnx"]["input"] == "input" and meta["onnx"]["output"] == "logits"
    assert meta["onnx"]["max_abs_diff"] <= meta["onnx"]["tolerance"]
    backends = meta["backends"]
    for backend in ("torch", "onnx"):
        assert backends[backend]["batch_1_ms"] > 0 and backends[backend]["batch_32_ms"] > 0
    assert backends["preferred"] in ("torch", "onnx")
    expected = "onnx" if backends["onnx_over_torch"] < 1 else "torch"
    assert backends["preferred"] == expected
    # No pickles anywhere: the weights load with safetensors alone.
    state = load_file(str(tmp_path / "m1" / "model.safetensors"))
    assert set(state) == set(net.state_dict())


@pytest.mark.parametrize(
    ("in_channels", "image_size", "scale"), [(1, 8, 1.0), (3, 32, 255.0), (3, 12, 255.0)]
)
def test_onnx_agrees_with_torch_at_any_batch_size(tmp_path, in_channels, image_size, scale):
    torch.manual_seed(1)
    config = small_config(
        in_channels=in_channels,
        image_size=image_size,
        scale=scale,
        mean=[0.5] * in_channels,
        std=[0.2] * in_channels,
    )
    net = build_network(config).eval()
    export(net, config, tmp_path / "m", time_backends=False)
    session = ort.InferenceSession(
        str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    [inp] = session.get_inputs()
    assert inp.name == "input" and inp.shape[1:] == [in_channels, image_size, image_size]
    for batch in (1, 5, 33):
        x = random_inputs(batch, [in_channels, image_size, image_size], scale=scale, seed=batch)
        with torch.inference_mode():
            expected = net(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_check_onnx_fails_loudly_when_the_graph_disagrees():
    torch.manual_seed(2)
    config = small_config()
    net = build_network(config).eval()
    data = onnx_bytes_of(net, [1, 8, 8], scale=255.0)
    check_onnx(net, data, [1, 8, 8], scale=255.0)  # the true pair agrees
    other = build_network(config).eval()  # different random weights
    with pytest.raises(OnnxMismatchError, match="disagrees"):
        check_onnx(other, data, [1, 8, 8], scale=255.0)


class Cummax(nn.Module):
    """A backbone with an op the ONNX exporter lacks (aten::cummax)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cummax(x.flatten(1), dim=1).values)


class Frozen(nn.Module):
    """A backbone whose Python-side number the tracer freezes: exports, but disagrees."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float(x.mean().item() + 1.0)


def wrapped(backbone: nn.Module) -> Network:
    return Network(
        backbone,
        in_channels=1,
        backbone_channels=1,
        backbone_size=None,
        scale=255.0,
        mean=[0.3],
        std=[0.4],
    ).eval()


def test_a_network_the_exporter_cannot_handle_still_exports_for_torch(tmp_path):
    config = small_config()
    exported = export(wrapped(Cummax(4)), config, tmp_path / "m")
    meta = exported.meta
    assert meta["files"] == ["model.safetensors", "model.json"]
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert "cummax" in meta["onnx"]["error"]
    assert meta["backends"]["preferred"] == "torch" and "onnx" not in meta["backends"]


def test_a_graph_that_disagrees_is_not_kept(tmp_path, caplog):
    config = small_config()
    with caplog.at_level("ERROR", logger="worker.export"):
        exported = export(wrapped(Frozen(4)), config, tmp_path / "m")
    assert "disagrees" in exported.meta["onnx"]["error"]
    assert not (tmp_path / "m" / "model.onnx").exists()
    assert "model.onnx" not in exported.meta["files"]
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_onnx_can_be_skipped(tmp_path):
    config = small_config()
    exported = export(build_network(config).eval(), config, tmp_path / "m", onnx=False)
    assert exported.meta["files"] == ["model.safetensors", "model.json"]
    assert "error" in exported.meta["onnx"]
