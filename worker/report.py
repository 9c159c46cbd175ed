"""What a job reports about its networks: each one's figures, measured once, and the
teacher-versus-student comparison of a distill or pipeline job.

Figures: accuracy on the evaluation set (when the network predicts its classes; mse and
mae for regression targets), parameters, fp32 size, and batch-1 latency on the serving
device (PyTorch eager under inference_mode, for teacher and student alike, so the two
compare). `serving` adds what the backend that will serve the student takes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from app.core.archs import count_params, size_bytes_fp32
from app.core.datasets import InMemoryData
from worker.build import Trained, same_classes
from worker.export import measure_latency_ms
from worker.train import evaluate


def figures(
    trained: Trained,
    eval_data: InMemoryData | None,
    *,
    device: torch.device,
    latency_device: torch.device,
) -> dict[str, Any]:
    """Accuracy on `eval_data` (computed on `device`), params, size of the fp32 weights,
    and batch-1 latency on `latency_device` (the serving device)."""
    net = copy.deepcopy(trained.net).eval()
    config = trained.config
    out: dict[str, Any] = {
        "arch": config.arch,
        "width": config.width,
        "params": count_params(net),
        "size_bytes": size_bytes_fp32(net),
        "latency_ms": round(
            measure_latency_ms(
                net,
                [config.in_channels, config.image_size, config.image_size],
                device=latency_device,
            ),
            4,
        ),
        "accuracy": None,
    }
    if eval_data is not None and same_classes(trained, eval_data):
        result = evaluate(net.to(device), eval_data, device=device)
        out["accuracy"] = result.get("accuracy")
        if trained.task == "regression":
            out["mse"], out["mae"] = result["mse"], result["mae"]
    elif eval_data is not None:
        names = trained.class_names
        out["accuracy_note"] = (
            "predicts other classes than the evaluation set's "
            f"({', '.join(names[:5])}{'...' if len(names) > 5 else ''})"
        )
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def comparison(
    teacher: dict[str, Any],
    student: dict[str, Any],
    *,
    eval_samples: int,
    latency_device: torch.device,
    strategy: str | None,
) -> dict[str, Any]:
    """The report of a distillation: both networks' figures, compression (teacher params
    over student params) and speedup (teacher latency over student latency)."""
    report: dict[str, Any] = {
        "teacher": teacher,
        "student": student,
        "compression": ratio(teacher["params"], student["params"]),
        "speedup": ratio(teacher["latency_ms"], student["latency_ms"]),
        "eval_samples": eval_samples,
        "latency_device": str(latency_device),
    }
    if strategy is not None:
        report["strategy"] = strategy
    return report


def serving_figures(meta: dict[str, Any], setting: str) -> dict[str, Any] | None:
    """The served backend's latency at batch 1 and 32, from the export's timings
    (model.json `backends`), under the `serving_backend` setting."""
    backends = meta.get("backends") or {}
    preferred = backends.get("preferred")
    if preferred not in backends:
        return None
    backend = preferred if setting == "auto" or setting not in backends else setting
    return {
        "backend": backend,
        "latency_ms": backends[backend].get("batch_1_ms"),
        "batch_32_ms": backends[backend].get("batch_32_ms"),
    }
