"""Example bodies for the OpenAPI docs: job specs to submit (tests check they are valid
specs), and the bodies the API answers with (tests/app/test_openapi_docs.py checks each
against its schema in the document)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from app.schemas.job_spec import JobSpec, default_evaluate
from app.services.paging import encode_token

TRAIN_EXAMPLE: dict[str, Any] = {
    "kind": "train",
    "name": "digits-small-cnn",
    "seed": 0,
    "model": {"arch": "small_cnn", "width": 0.5},
    "train": {
        "dataset": {"name": "digits"},
        "epochs": 15,
        "optimizer": {"name": "adamw", "lr": 0.003},
    },
}

PIPELINE_EXAMPLE: dict[str, Any] = {
    "kind": "pipeline",
    "name": "digits-transfer",
    "seed": 0,
    "teacher": {
        "source": "train",
        "arch": "resnet18",
        "train": {"dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]}, "epochs": 20},
    },
    "student": {"arch": "small_cnn", "width": 0.25},
    "distill": {
        "dataset": {"name": "digits"},
        "loss": {"type": "kl", "temperature": 4.0, "alpha": 1.0},
        "epochs": 20,
    },
    "finetune": {
        "dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 30,
    },
    "evaluate": {"dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "split": "test"}},
}

DISTILL_EXAMPLE: dict[str, Any] = {
    "kind": "distill",
    "name": "digits-distill",
    "teacher": {"source": "model", "model_id": "<id of a finished model>"},
    "student": {"arch": "small_cnn", "width": 0.25},
    "distill": {
        "dataset": {"name": "digits", "labels": False},
        "loss": {"type": "mse"},
        "epochs": 10,
    },
}

FINETUNE_EXAMPLE: dict[str, Any] = {
    "kind": "finetune",
    "name": "digits-finetune",
    "model": {"source": "model", "model_id": "<id of a finished model>"},
    "finetune": {
        "dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 30,
        "freeze_backbone_epochs": 5,
    },
}

JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "train": {"summary": "Train small_cnn on digits", "value": TRAIN_EXAMPLE},
    "pipeline": {"summary": "Teacher -> student -> target on digits", "value": PIPELINE_EXAMPLE},
    "distill": {"summary": "Distill a finished model into a smaller one", "value": DISTILL_EXAMPLE},
    "finetune": {"summary": "Fine-tune a finished model on 10 shots", "value": FINETUNE_EXAMPLE},
}


# --------------------------------------------------------------------- answer examples
# Bodies the API answers with, as a real run gave them (examples/train_digits.json and
# examples/pipeline_digits.json on two CPU cores, figures rounded). The ids tie them
# together: the pipeline job made PIPELINE_MODEL_ID, and so on.
TRAIN_JOB_ID = "6671dfa0-05bd-48f5-8a67-bd25406fc72b"
TRAIN_MODEL_ID = "8b67bb35-ef3d-5c81-b899-8668b4c62f93"
PIPELINE_JOB_ID = "8a8a32b1-8418-4323-8b0c-a6152902b6b4"
PIPELINE_MODEL_ID = "ab29384f-232f-567d-a526-0d5edbf1d796"
DATASET_ID = "a53295a8-e8b6-4c78-9dce-281eee235c93"
CHECKPOINT_ID = "73ec7258-b575-4d94-bb83-27c7deffbe1e"


def accepted_spec(spec: dict[str, Any], target: str) -> dict[str, Any]:
    """`spec` as a job carries it: parsed, defaults filled in, and without `evaluate` the
    test split of the `target` stage's dataset (what the submission check fills in)."""
    parsed = TypeAdapter(JobSpec).validate_python(spec)
    if parsed.evaluate is None:
        parsed = parsed.model_copy(
            update={"evaluate": default_evaluate(getattr(parsed, target).dataset)}
        )
    return parsed.model_dump(mode="json")


_PROGRESS = ("stage", "epoch", "epochs", "step", "steps", "fraction", "eta_seconds", "loss")
# What a job's progress says once it has succeeded.
_DONE = {**dict.fromkeys(_PROGRESS), "stage": "done", "fraction": 1.0, "eta_seconds": 0.0}


def _job(
    spec: dict[str, Any], target: str, job_id: str, created_at: str, **fields: Any
) -> dict[str, Any]:
    """A job body: a QUEUED job of `spec` unless `fields` say otherwise."""
    job: dict[str, Any] = {
        "id": job_id,
        "kind": spec["kind"],
        "name": spec.get("name"),
        "state": "QUEUED",
        "spec": accepted_spec(spec, target),
        "stage": None,
        "progress": dict.fromkeys(_PROGRESS),
        "metrics": None,
        "error": None,
        "attempts": 0,
        "max_attempts": 3,
        "created_at": created_at,
        "started_at": None,
        "finished_at": None,
        "model_id": None,
        "report": None,
    }
    return {**job, **fields}


def page(items: str, item: dict[str, Any]) -> dict[str, Any]:
    """A list answer of one item that fills its page (`page_size=1`), with the token of
    the next page as app/services/paging.py makes it."""
    created_at = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
    return {items: [item], "next_page_token": encode_token(created_at, item["id"])}


def _figures(arch: str, width: float, params: int, size: int, ms: float, acc: float) -> dict:
    """One network's figures in a report."""
    return {
        "arch": arch,
        "width": width,
        "params": params,
        "size_bytes": size,
        "latency_ms": ms,
        "accuracy": acc,
    }


def _succeeded(
    spec: dict[str, Any],
    target: str,
    ids: tuple[str, str],
    times: tuple[str, str, str],
    **fields: Any,
) -> dict[str, Any]:
    """A job that succeeded at its first attempt: `ids` are the job's and its model's,
    `times` its created, started and finished times."""
    created_at, started_at, finished_at = times
    return _job(
        spec,
        target,
        ids[0],
        created_at,
        state="SUCCEEDED",
        progress=_DONE,
        attempts=1,
        started_at=started_at,
        finished_at=finished_at,
        model_id=ids[1],
        **fields,
    )


SUCCEEDED_TRAIN_JOB = _succeeded(
    TRAIN_EXAMPLE,
    "train",
    (TRAIN_JOB_ID, TRAIN_MODEL_ID),
    ("2026-12-01T17:01:41.649396Z", "2026-12-01T17:02:38.335915Z", "2026-12-01T17:02:39.364196Z"),
    stage="train",
    metrics={"eval_samples": 355, "accuracy": 0.9915, "loss": 0.0491},
)

PIPELINE_REPORT: dict[str, Any] = {
    "teacher": {
        **_figures("resnet18", 1.0, 11_179_077, 44_766_952, 5.1447, 0.8418),
        "accuracy_ci95": [0.7809, 0.8882],
        "fine_tuned_on_target": True,
    },
    "student": {
        **_figures("small_cnn", 0.25, 4697, 22_752, 0.2233, 0.9209),
        "accuracy_ci95": [0.8716, 0.9523],
        "serving": {"backend": "onnx", "latency_ms": 0.0312, "batch_32_ms": 0.194},
    },
    "compression": 2380.046,
    "speedup": 23.039,
    "eval_samples": 177,
    "eval_note": "measured on 177 images: an accuracy here is known to within up to \u00b17 "
    "points at 95% (accuracy_ci95 gives each one's interval); name a larger `evaluate` set "
    "for a sharper figure",
    "latency_device": "cpu",
    "strategy": "finetune_then_distill",
    "baseline": {
        **_figures("small_cnn", 0.25, 4697, 22_752, 0.4944, 0.904),
        "accuracy_ci95": [0.8516, 0.9392],
    },
    "gain_over_baseline": 0.0169,
    "stages": {
        "baseline": 1.938,
        "distill": 2.297,
        "finetune": 1.525,
        "teacher": 52.921,
        "teacher_finetune": 37.925,
    },
    "summary": "student small_cnn w0.25 (4,697 params): accuracy 0.921; teacher resnet18 "
    "(11,179,077 params), fine-tuned on the target: accuracy 0.842; the same student trained "
    "from scratch: accuracy 0.904 (+1.7 points from the teacher) (on 177 evaluation images). "
    "2,380x fewer parameters, 23.0x faster at batch 1 (cpu).",
}

SUCCEEDED_PIPELINE_JOB = _succeeded(
    PIPELINE_EXAMPLE,
    "finetune",
    (PIPELINE_JOB_ID, PIPELINE_MODEL_ID),
    ("2026-12-01T17:01:41.634513Z", "2026-12-01T17:01:41.749720Z", "2026-12-01T17:02:38.331954Z"),
    stage="baseline",
    metrics={"eval_samples": 177, "accuracy": 0.9209, "loss": 0.2561},
    report=PIPELINE_REPORT,
)

CANCELLING_PIPELINE_JOB = {
    **SUCCEEDED_PIPELINE_JOB,
    "state": "CANCELLING",
    "stage": "teacher",
    "progress": {
        "stage": "teacher",
        "epoch": 12,
        "epochs": 20,
        "step": 134,
        "steps": 240,
        "fraction": 0.5583,
        "eta_seconds": 28.0,
        "loss": 0.00092,
    },
    "metrics": {
        "stage": "teacher",
        "epoch": 11,
        "train_loss": 0.000698,
        "lr": 0.000422,
        "train_accuracy": 1.0,
        "val_accuracy": 1.0,
        "val_loss": 0.000453,
    },
    "finished_at": None,
    "model_id": None,
    "report": None,
}

JOB_LIST = page("jobs", SUCCEEDED_TRAIN_JOB)

_EPOCHS: list[tuple[int, str, dict[str, float]]] = [
    (
        188,
        "2026-12-01T17:02:38.422476Z",
        {
            "train_loss": 1.4539,
            "lr": 0.002967,
            "train_accuracy": 0.715,
            "val_accuracy": 0.9127,
            "val_loss": 1.5436,
        },
    ),
    (
        189,
        "2026-12-01T17:02:38.484757Z",
        {
            "train_loss": 0.5361,
            "lr": 0.00287,
            "train_accuracy": 0.9438,
            "val_accuracy": 0.9775,
            "val_loss": 0.3403,
        },
    ),
]
METRIC_HISTORY: dict[str, Any] = {
    "job_id": TRAIN_JOB_ID,
    "metrics": [
        {"event_id": event_id, "stage": "train", "epoch": n, "time": time, "values": values}
        for n, (event_id, time, values) in enumerate(_EPOCHS, start=1)
    ],
    "stages": {
        "train": [{"epoch": n, **values} for n, (_, _, values) in enumerate(_EPOCHS, start=1)]
    },
}

# The stream of the same train job, as GET .../events sends it (the metric events of
# epochs 3 to 15 left out).
_EVENTS: list[tuple[int, str, dict[str, Any]]] = [
    (2, "state", {"state": "QUEUED"}),
    (186, "state", {"state": "RUNNING", "attempt": 1, "worker": "vm:1106:4c6c19"}),
    (
        187,
        "progress",
        {
            "stage": "train",
            "epoch": 0,
            "epochs": 15,
            "fraction": 0.0,
            "eta_seconds": None,
            "message": "training small_cnn on digits/train (1442 images)",
        },
    ),
    *[
        (event_id, "metric", {"stage": "train", "epoch": n, **values})
        for n, (event_id, _, values) in enumerate(_EPOCHS, start=1)
    ],
    (
        202,
        "progress",
        {
            "stage": "train",
            "epoch": 15,
            "epochs": 15,
            "step": 345,
            "steps": 345,
            "fraction": 1.0,
            "eta_seconds": 0.0,
            "loss": 0.0108,
        },
    ),
    (
        204,
        "state",
        {
            "state": "SUCCEEDED",
            "model_id": TRAIN_MODEL_ID,
            "metrics": {"eval_samples": 355, "accuracy": 0.9915, "loss": 0.0491},
        },
    ),
]
EVENT_STREAM = "retry: 2000\n\n" + "".join(
    f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
    for event_id, kind, data in _EVENTS
)

# The head of a plot (matplotlib's SVG); the drawing itself is left out.
PLOT_SVG = """<?xml version="1.0" encoding="utf-8" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"
  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">
<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="302.4pt" height="432pt" \
viewBox="0 0 302.4 432" xmlns="http://www.w3.org/2000/svg" version="1.1">
 <!-- two panels: loss above, accuracy below, per stage and epoch -->
</svg>
"""

DATASET: dict[str, Any] = {
    "id": DATASET_ID,
    "name": "my-digits",
    "format": "npz",
    "num_samples": 1797,
    "task": "classification",
    "targets": None,
    "num_classes": 10,
    "classes": [str(digit) for digit in range(10)],
    "labeled": True,
    "shape": [1, 8, 8],
    "dtype": "float32",
    "meta": {
        "mean": [0.305136],
        "std": [0.37616],
        "stats_split": "train",
        "split_sizes": {"train": 1442, "test": 355},
        "task": "classification",
        "class_counts": dict(
            zip(
                (str(digit) for digit in range(10)),
                (178, 182, 177, 183, 181, 182, 181, 179, 174, 180),
                strict=True,
            )
        ),
        "source": {"layout": "NHW"},
    },
    "size_bytes": 475_192,
    "created_at": "2026-12-01T17:03:30.972428Z",
}

CHECKPOINT: dict[str, Any] = {
    "id": CHECKPOINT_ID,
    "name": "digits-small-cnn",
    "arch": "small_cnn",
    "num_classes": 10,
    "in_channels": 1,
    "width": 0.5,
    "input_size": 8,
    "mean": [0.305136],
    "std": [0.37616],
    "meta": {
        "in_channels": 1,
        "width": 0.5,
        "layout": "network",
        "tensors": 41,
        "params": 18_706,
        "mean": [0.305136],
        "std": [0.37616],
        "input_size": 8,
    },
    "size_bytes": 78_388,
    "created_at": "2026-12-01T17:06:25.267902Z",
}

_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 8, 8], "scale": 1.0, "range": "0-1"}
_ONNX = {
    "opset": 17,
    "input": "input",
    "output": "logits",
    "max_abs_diff": 2.7e-06,
    "tolerance": 0.0028,
    "size_bytes": 22_379,
}
_BACKENDS = {
    "device": "cpu",
    "threads": 2,
    "torch": {"batch_1_ms": 0.1391, "batch_32_ms": 0.3698},
    "onnx": {"batch_1_ms": 0.0133, "batch_32_ms": 0.0529},
    "onnx_over_torch": 0.117,
    "preferred": "onnx",
}
MODEL: dict[str, Any] = {
    "id": PIPELINE_MODEL_ID,
    "name": "digits-transfer",
    "arch": "small_cnn",
    "task": "classification",
    "classes": ["5", "6", "7", "8", "9"],
    "num_classes": 5,
    "input": _INPUT,
    "normalization": {"mean": [0.305136], "std": [0.37616]},
    "metrics": {"eval_samples": 177, "accuracy": 0.9209, "loss": 0.2561},
    "job_id": PIPELINE_JOB_ID,
    "params": 4697,
    "size_bytes": 22_752,
    "files": ["model.safetensors", "model.json", "model.onnx"],
    "backends": _BACKENDS,
    "onnx": _ONNX,
    "serving_backend": "onnx",
    "loaded": False,
    "created_at": "2026-12-01T17:02:38.331954Z",
}
MODEL_LIST = page("models", MODEL)

# model.json: what the worker wrote beside the weights (the model body's figures, plus
# the network's configuration that serving rebuilds it from).
MODEL_JSON: dict[str, Any] = {
    "format": "stillhouse.model/v1",
    **{key: MODEL[key] for key in ("id", "name", "arch")},
    "network": {
        "arch": "small_cnn",
        "num_classes": 5,
        "in_channels": 1,
        "image_size": 8,
        "width": 0.25,
        "input_size": None,
        "scale": 1.0,
        **MODEL["normalization"],
    },
    **{
        key: MODEL[key]
        for key in (
            "task",
            "classes",
            "num_classes",
            "input",
            "normalization",
            "params",
            "metrics",
            "job_id",
            "size_bytes",
            "onnx",
            "backends",
            "files",
        )
    },
}

# A test image of a 7 from scikit-learn's digits (load_digits().images[174] / 16), and
# what the pipeline's student (digits 5-9) answers with ?k=2.
DIGIT_SEVEN = [
    [0.0, 0.0, 0.0625, 0.5, 0.625, 0.9375, 0.6875, 0.0],
    [0.0, 0.125, 0.875, 0.9375, 0.8125, 1.0, 0.4375, 0.0],
    [0.0, 0.0, 0.375, 0.0, 0.375, 0.875, 0.125, 0.0],
    [0.0, 0.0, 0.0, 0.1875, 0.6875, 0.75, 0.125, 0.0],
    [0.0, 0.0, 0.125, 1.0, 1.0, 0.9375, 0.5, 0.0],
    [0.0, 0.0, 0.1875, 0.8125, 0.9375, 0.125, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.8125, 0.625, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0625, 1.0, 0.3125, 0.0, 0.0, 0.0],
]
PREDICT_REQUEST: dict[str, Any] = {"inputs": [DIGIT_SEVEN]}
PREDICT_RESPONSE: dict[str, Any] = {
    "predictions": [
        {
            "label": "7",
            "index": 2,
            "score": 0.8922,
            "top_k": [{"label": "7", "score": 0.8922}, {"label": "5", "score": 0.0637}],
        }
    ]
}

# The Open Inference Protocol's answers for the same model and image.
V2_SERVER: dict[str, Any] = {
    "name": "stillhouse",
    "version": "0.1.0",
    "extensions": ["binary_tensor_data"],
}
V2_MODEL: dict[str, Any] = {
    "name": PIPELINE_MODEL_ID,
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
    "outputs": [
        {"name": name, "datatype": "FP32", "shape": [-1, 5]} for name in ("logits", "probabilities")
    ],
    "parameters": {"task": "classification", "classes": MODEL["classes"], "scale": 1.0},
}
V2_READY: dict[str, Any] = {"name": PIPELINE_MODEL_ID, "ready": True}
V2_INFER_RESPONSE: dict[str, Any] = {
    "model_name": PIPELINE_MODEL_ID,
    "model_version": "1",
    "outputs": [
        {
            "name": "logits",
            "datatype": "FP32",
            "shape": [1, 5],
            "data": [-0.1074, -1.0718, 2.5313, -1.3875, -3.5336],
        },
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [1, 5],
            "data": [0.0637, 0.0243, 0.8922, 0.0177, 0.0021],
        },
    ],
}

# A few lines of GET /metrics (Prometheus text format).
METRICS_TEXT = """# HELP stillhouse_jobs Jobs by state.
# TYPE stillhouse_jobs gauge
stillhouse_jobs{state="QUEUED"} 1.0
stillhouse_jobs{state="RUNNING"} 1.0
stillhouse_jobs{state="CANCELLING"} 0.0
stillhouse_jobs{state="SUCCEEDED"} 3.0
stillhouse_jobs{state="FAILED"} 0.0
stillhouse_jobs{state="CANCELLED"} 0.0
# HELP stillhouse_queue_depth Jobs waiting for a worker.
# TYPE stillhouse_queue_depth gauge
stillhouse_queue_depth 1.0
# HELP stillhouse_oldest_queued_job_age_seconds Age of the oldest queued job (0 when none).
# TYPE stillhouse_oldest_queued_job_age_seconds gauge
stillhouse_oldest_queued_job_age_seconds 4.2
"""


def conflict(path: str, detail: str) -> dict[str, Any]:
    """The problem+json body of a 409 on `path`."""
    return {
        "type": "https://stillhouse.dev/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": detail,
        "instance": path,
    }


WORKER_LIST = {
    "workers": [
        {
            "id": "gpu-box-1:4120:9f2c1a",
            "hostname": "gpu-box-1",
            "device": "cuda",
            "gpus": 1,
            "gpu_memory_bytes": 85_899_345_920,
            "labels": ["a100"],
            "started_at": "2026-12-06T17:40:02.118Z",
            "last_seen": "2026-12-06T18:02:12.530Z",
            "job_id": PIPELINE_JOB_ID,
        },
        {
            "id": "cpu-box-2:811:03be77",
            "hostname": "cpu-box-2",
            "device": "cpu",
            "gpus": 0,
            "gpu_memory_bytes": 0,
            "labels": [],
            "started_at": "2026-12-06T17:55:40.004Z",
            "last_seen": "2026-12-06T18:02:10.991Z",
            "job_id": None,
        },
    ]
}
