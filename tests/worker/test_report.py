"""The report's one-line summary: what the pipeline bought, worded either way round."""

from __future__ import annotations

import math
from typing import Any

import torch

from worker.job_kinds import wants_baseline, wants_teacher_on_target
from worker.report import comparison, summary, wilson_interval


def figures(arch: str, params: int, accuracy: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "arch": arch,
        "width": extra.pop("width", 1.0),
        "params": params,
        "accuracy": accuracy,
        **extra,
    }


def report(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "student": figures("small_cnn", 4_700, 0.723, width=0.25),
        "teacher": figures("resnet18", 11_180_000, 0.927, fine_tuned_on_target=True),
        "baseline": figures("small_cnn", 4_700, 0.209, width=0.25),
        "gain_over_baseline": 0.514,
        "compression": 2378.7,
        "speedup": 26.43,
        "latency_device": "cpu",
    }
    out.update(changes)
    return out


def test_summary_states_gain_compression_and_speedup():
    assert summary(report()) == (
        "student small_cnn w0.25 (4,700 params): accuracy 0.723; "
        "teacher resnet18 (11,180,000 params), fine-tuned on the target: accuracy 0.927; "
        "the same student trained from scratch: accuracy 0.209 (+51.4 points from the "
        "teacher). 2,379x fewer parameters, 26.4x faster at batch 1 (cpu)."
    )


def test_a_student_bigger_or_slower_than_its_teacher_is_said_so():
    text = summary(report(compression=0.5, speedup=0.8))
    assert text.endswith("2.0x more parameters, 1.2x slower at batch 1 (cpu).")


def test_a_teacher_without_accuracy_says_why():
    note = "predicts other classes; not fine-tuned on the target (teacher_on_target is false)"
    teacher = figures("resnet18", 11_180_000, None, accuracy_note=note)
    text = summary(report(teacher=teacher, baseline=None, gain_over_baseline=None))
    assert f"teacher resnet18 (11,180,000 params): {note};" not in text  # no baseline part
    assert f"teacher resnet18 (11,180,000 params): {note}." in text
    assert "from scratch" not in text


def test_defaults_for_the_optional_stages():
    assert wants_baseline(None, 5_000_000) and not wants_baseline(None, 5_000_001)
    assert wants_baseline(True, 10**9) and not wants_baseline(False, 10)
    assert wants_teacher_on_target(None, 30_000_000)
    assert not wants_teacher_on_target(None, 30_000_001)
    assert wants_teacher_on_target(True, 10**9) and not wants_teacher_on_target(False, 10)


def test_accuracy_intervals_are_wilson_intervals():
    # 10 of 10 right is not a certainty: the textbook Wilson interval is [0.722, 1].
    assert wilson_interval(1.0, 10) == [0.7225, 1.0]
    # 90 of 100: centre (0.9 + z^2/200) / (1 + z^2/100), half-width by hand.
    z = 1.96
    centre = (0.9 + z * z / 200) / (1 + z * z / 100)
    half = z / (1 + z * z / 100) * math.sqrt(0.9 * 0.1 / 100 + z * z / 40_000)
    assert wilson_interval(0.9, 100) == [round(centre - half, 4), round(centre + half, 4)]
    assert wilson_interval(0.0, 5)[0] == 0.0


def test_a_small_evaluation_set_is_said_so():
    figures_ = {"params": 10, "latency_ms": 1.0}
    small = comparison(
        figures_, figures_, eval_samples=177, latency_device=torch.device("cpu"), strategy=None
    )
    assert small["eval_note"].startswith("measured on 177 images")
    assert "±7 points" in small["eval_note"]
    large = comparison(
        figures_, figures_, eval_samples=10_000, latency_device=torch.device("cpu"), strategy=None
    )
    assert "eval_note" not in large
    text = summary(report(eval_note=small["eval_note"], eval_samples=177))
    assert "(on 177 evaluation images)" in text
