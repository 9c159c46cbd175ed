"""A finished model's artifacts: model.safetensors, model.json (and model.onnx, see below).

The folder is written completely before the database row that points at it exists, and
serving rebuilds the model from these files with the architecture registry alone.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from worker.checkpoints import atomic_write
from worker.nets import Network, NetworkConfig, count_params

log = logging.getLogger(__name__)

MODEL_FORMAT = "stillhouse.model/v1"
# Name of the input tensor, in model.json, the ONNX graph and the V2 metadata.
INPUT_NAME = "input"


@dataclass
class ExportedModel:
    model_id: str
    folder: Path
    meta: dict[str, Any]
    params: int
    size_bytes: int


def model_meta(
    *,
    model_id: str,
    net: Network,
    config: NetworkConfig,
    class_names: list[str],
    metrics: dict[str, Any],
    job_id: str | None,
    name: str | None,
) -> dict[str, Any]:
    return {
        "format": MODEL_FORMAT,
        "id": model_id,
        "name": name,
        "arch": config.arch,
        "network": config.to_json(),
        "classes": class_names,
        "num_classes": len(class_names),
        "input": {
            "name": INPUT_NAME,
            "datatype": "FP32",
            "shape": [config.in_channels, config.image_size, config.image_size],
            # Inputs are taken on the training data's scale; the model divides by it.
            "scale": config.scale,
            "range": "0-255" if config.scale == 255.0 else "0-1",
        },
        "normalization": {"mean": config.mean, "std": config.std},
        "params": count_params(net),
        "metrics": metrics,
        "job_id": job_id,
    }


def export_model(
    net: Network,
    config: NetworkConfig,
    *,
    model_id: str,
    folder: Path,
    class_names: list[str],
    metrics: dict[str, Any],
    job_id: str | None,
    name: str | None,
) -> ExportedModel:
    """Write model.safetensors and model.json into `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    meta = model_meta(
        model_id=model_id,
        net=net,
        config=config,
        class_names=class_names,
        metrics=metrics,
        job_id=job_id,
        name=name,
    )
    size = (folder / "model.safetensors").stat().st_size
    meta["size_bytes"] = size
    meta["files"] = ["model.safetensors", "model.json"]
    atomic_write(folder / "model.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return ExportedModel(model_id, folder, meta, meta["params"], size)


@torch.inference_mode()
def measure_latency_ms(
    net: torch.nn.Module, input_shape: list[int], *, device: torch.device, runs: int = 50
) -> float:
    """Median wall time of one batch-1 forward pass, after warm-up (milliseconds)."""
    net = net.eval().to(device)
    x = torch.rand(1, *input_shape, device=device)
    for _ in range(5):
        net(x)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)
