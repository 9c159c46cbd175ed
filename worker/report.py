"""What a job reports about its networks: each one's figures, measured once, and the
teacher-versus-student comparison of a distill or pipeline job.

Figures: accuracy on the evaluation set (when the network predicts its classes; mse and
mae for regression targets), parameters, the size of its weights file, and batch-1
latency on the serving device (PyTorch eager under inference_mode, for teacher and
student alike, so the two compare). `serving` adds what the backend that will serve the
student takes; `summary` says the outcome in one line. A job that asked for int8 adds
`student.int8` (model.json's block: the int8 model against fp32), `student.serving.
precision` says which one is served, and the summary a sentence about it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from app.core.archs import count_params
from app.core.datasets import InMemoryData
from app.core.model_format import INT8_ONNX_FILE
from worker.build import Trained, same_classes
from worker.export import measure_latency_ms, weights_file_bytes
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
        # As `/api/v1/models` reports the served student: its model.safetensors file.
        "size_bytes": weights_file_bytes(net),
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
        if out["accuracy"] is not None:
            out["accuracy_ci95"] = wilson_interval(out["accuracy"], len(eval_data))
        if trained.task == "regression":
            out["mse"], out["mae"] = result["mse"], result["mae"]
    elif eval_data is not None:
        names = trained.class_names
        out["accuracy_note"] = (
            "predicts other classes than the evaluation set's "
            f"({', '.join(names[:5])}{'...' if len(names) > 5 else ''})"
        )
    return out


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of an accuracy measured on `n` samples: honest at
    0 or 1 and on a few samples, where the normal approximation gives [1, 1] for 10 of 10."""
    if n <= 0:
        return [0.0, 1.0]
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


# Below this many evaluation samples the report says how wide its accuracies are.
SMALL_EVAL = 500


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
    if eval_samples < SMALL_EVAL:
        # The widest 95% half-width, at accuracy 0.5; accuracy_ci95 has each one's own.
        half = 100 * 1.96 * math.sqrt(0.25 / max(1, eval_samples))
        report["eval_note"] = (
            f"measured on {eval_samples} images: an accuracy here is known to within up to "
            f"±{half:.0f} points at 95% (accuracy_ci95 gives each one's interval); name a "
            "larger `evaluate` set for a sharper figure"
        )
    if strategy is not None:
        report["strategy"] = strategy
    return report


def serving_figures(
    meta: dict[str, Any], setting: str, device: str = "cpu"
) -> dict[str, Any] | None:
    """The served backend's latency at batch 1 and 32, from the export's timings
    (model.json `backends`, or `int8` when serving takes the int8 model), under the
    `serving_backend` setting and the serving `device` (on a GPU: PyTorch, fp32, as
    app/serving/backends.py chooses)."""
    int8 = meta.get("int8") or {}
    if device != "cpu":
        setting = "torch"
    if INT8_ONNX_FILE in meta.get("files", []) and (
        setting == "onnx_int8" or (setting == "auto" and int8.get("served") is True)
    ):
        return {
            "backend": "onnx_int8",
            "precision": "int8",
            "latency_ms": int8.get("batch_1_ms"),
            "batch_32_ms": int8.get("batch_32_ms"),
        }
    backends = meta.get("backends") or {}
    preferred = backends.get("preferred")
    if preferred not in backends:
        return None
    backend = preferred if setting == "auto" or setting not in backends else setting
    return {
        "backend": backend,
        "precision": "fp32",
        "latency_ms": backends[backend].get("batch_1_ms"),
        "batch_32_ms": backends[backend].get("batch_32_ms"),
    }


def summary(report: dict[str, Any]) -> str:
    """The outcome in one line: student vs teacher vs the same student from scratch, and
    what the student saves (parameters, latency)."""
    student, teacher = report["student"], report["teacher"]
    baseline = report.get("baseline")
    regression = "mse" in student
    parts = [f"student {_name(student)}: {_score(student, regression)}"]
    teacher_text = f"teacher {_name(teacher)}"
    if teacher.get("fine_tuned_on_target"):
        teacher_text += ", fine-tuned on the target"
    parts.append(f"{teacher_text}: {_score(teacher, regression)}")
    if baseline is not None:
        text = f"the same student trained from scratch: {_score(baseline, regression)}"
        gain = report.get("gain_over_baseline")
        if gain is not None:
            text += f" ({100 * gain:+.1f} points from the teacher)"
        elif regression and baseline.get("mse") is not None:
            text += f" (mse {student['mse'] - baseline['mse']:+.4g} from the teacher)"
        parts.append(text)
    line = "; ".join(parts)
    if report.get("eval_note") and not regression:
        line += f" (on {report['eval_samples']} evaluation images)"
    size = []
    compression, speedup = report.get("compression"), report.get("speedup")
    if compression:
        size.append(_times(compression, "fewer parameters", "more parameters"))
    if speedup:
        where = f" at batch 1 ({report['latency_device']})"
        size.append(_times(speedup, "faster", "slower") + where)
    line += (". " + ", ".join(size) if size else "") + "."
    if student.get("int8"):
        line += " " + int8_text(student["int8"])
    return line


def int8_text(block: dict[str, Any]) -> str:
    """The int8 model against fp32 in one sentence, and whether it is served."""
    if block.get("error"):
        return f"int8: no int8 model ({block['error']}); fp32 is served."
    if block.get("accuracy") is not None and block.get("fp32_accuracy") is not None:
        score = (
            f"int8: accuracy {block['accuracy']:.3f} against fp32's "
            f"{block['fp32_accuracy']:.3f} ({0.0 - block['drop_points']:+.1f} points)"
        )
    elif block.get("agreement") is not None:
        score = f"int8: the same top class as fp32 on {100 * block['agreement']:.1f}% of images"
    else:
        score = "int8: not measured on an evaluation set"
    speed = [
        f"{_times(block[f'speedup_batch_{b}'], 'faster', 'slower')} at batch {b} "
        f"({block[f'batch_{b}_ms']:.3g} ms against {block[f'fp32_batch_{b}_ms']:.3g})"
        for b in (1, 32)
        if block.get(f"speedup_batch_{b}")
    ]
    verdict = "served" if block.get("served") else "not served"
    why = f" ({block['reason']})" if block.get("reason") else ""
    return f"{score}, {', '.join(speed)}; {verdict}{why}."


def _times(ratio: float, above: str, below: str) -> str:
    """A teacher/student ratio in words, either way round: 26.4 -> "26.4x faster",
    0.5 -> "2.0x slower" (a student may be bigger or slower than its teacher)."""
    word, factor = (above, ratio) if ratio >= 1 else (below, 1 / ratio)
    number = f"{factor:,.0f}" if factor >= 100 else f"{factor:.1f}"
    return f"{number}x {word}"


def _name(figures: dict[str, Any]) -> str:
    width = figures.get("width")
    arch = figures["arch"] + (f" w{width:g}" if width not in (None, 1.0) else "")
    return f"{arch} ({figures['params']:,} params)"


def _score(figures: dict[str, Any], regression: bool) -> str:
    if regression:
        mse = figures.get("mse")
        return "no mse on the evaluation set" if mse is None else f"mse {mse:.4g}"
    accuracy = figures.get("accuracy")
    if accuracy is None:
        return figures.get("accuracy_note", "no accuracy on the evaluation set")
    return f"accuracy {accuracy:.3f}"
