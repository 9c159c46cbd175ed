"""Digits transfer benchmark: what distillation + transfer buys on a few-shot target.

Source task: digits 0-4 (a resnet18 teacher is trained on it). Target task: digits 5-9
with 10 labelled images per class. Distill set: all training images, unlabelled. Student:
small_cnn (width 1.0: 153x fewer parameters than resnet18). Compared, per seed, on the
target's test split (177 images):

- scratch:               the student trained on the 10 shots alone;
- fine-tuned teacher:    the teacher fine-tuned on the 10 shots (the accuracy to match);
- distill_then_finetune: the pipeline in the founding document's order;
- finetune_then_distill: the pipeline adapting the teacher first.

Every method uses the same fine-tuning recipe (epochs, batch, lr) on the 10 shots, and
every number comes from a real job run through the queue and worker.

    python -m bench.digits_transfer            # 3 seeds, ~15 minutes on 2 cores
    python -m bench.digits_transfer --quick    # 1 seed, shorter schedules
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any

from bench.harness import Harness, machine

log = logging.getLogger("bench.digits_transfer")

SOURCE = {"name": "digits", "classes": [0, 1, 2, 3, 4]}
TARGET = {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10}
EVALUATE = {"dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "split": "test"}}
STUDENT = {"arch": "small_cnn", "width": 1.0}  # --student-width changes it


def recipes(quick: bool) -> dict[str, dict[str, Any]]:
    """One recipe per kind of fit, shared by every method. Chosen on a validation set (the
    target classes' train split, not the test split): random crops help every method
    by 1.5-4 points on 10 shots; lr 1e-3 suits both scratch and pretrained networks; a
    10-epoch linear probe (frozen backbone) first is the usual LP-FT recipe for fine-tuning.
    """
    teacher_epochs, shots_epochs, distill_epochs = (8, 40, 10) if quick else (20, 100, 30)
    shots = {
        "dataset": TARGET,
        "epochs": shots_epochs,
        "batch_size": 10,
        "augment": "crop",
        "optimizer": {"name": "adamw", "lr": 1e-3},
    }
    return {
        "teacher": {
            "dataset": SOURCE,
            "epochs": teacher_epochs,
            "batch_size": 64,
            "augment": "crop",
        },
        # Training from scratch on the 10 shots (nothing to freeze).
        "scratch": shots,
        # Fine-tuning anything pretrained on the 10 shots.
        "shots": {**shots, "freeze_backbone_epochs": shots_epochs // 10},
        "distill": {
            "dataset": {"name": "digits", "labels": False},
            "epochs": distill_epochs,
            "batch_size": 64,
            "augment": "crop",
            "loss": {"type": "kl", "temperature": 4.0},
        },
    }


def one_seed(h: Harness, seed: int, quick: bool, student: dict[str, Any]) -> dict[str, Any]:
    r = recipes(quick)
    t0 = time.perf_counter()
    teacher = h.run(
        {
            "kind": "train",
            "name": f"teacher-{seed}",
            "seed": seed,
            "model": {"arch": "resnet18"},
            "train": r["teacher"],
        }
    )
    teacher_ref = {"source": "model", "model_id": teacher["model_id"]}
    scratch = h.run(
        {
            "kind": "train",
            "name": f"scratch-{seed}",
            "seed": seed,
            "model": student,
            "train": r["scratch"],
            "evaluate": EVALUATE,
        }
    )
    tuned_teacher = h.run(
        {
            "kind": "finetune",
            "name": f"teacher-ft-{seed}",
            "seed": seed,
            "model": teacher_ref,
            "finetune": r["shots"],
            "evaluate": EVALUATE,
        }
    )
    out: dict[str, Any] = {
        "seed": seed,
        "teacher_source_accuracy": teacher["metrics"]["accuracy"],
        "scratch": scratch["metrics"]["accuracy"],
        "finetuned_teacher": tuned_teacher["metrics"]["accuracy"],
    }
    for strategy in ("distill_then_finetune", "finetune_then_distill"):
        job = h.run(
            {
                "kind": "pipeline",
                "name": f"{strategy}-{seed}",
                "seed": seed,
                "strategy": strategy,
                "teacher": teacher_ref,
                "student": student,
                "distill": r["distill"],
                "finetune": r["shots"],
                "evaluate": EVALUATE,
            }
        )
        out[strategy] = job["metrics"]["accuracy"]
        out[f"{strategy}_seconds"] = job["seconds"]
        out["student_params"] = job["report"]["student"]["params"]
        out["teacher_params"] = job["report"]["teacher"]["params"]
        out["compression"] = job["report"]["compression"]
        out["speedup"] = job["report"]["speedup"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("seed %d: %s", seed, out)
    return out


METHODS = ["scratch", "finetuned_teacher", "distill_then_finetune", "finetune_then_distill"]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for m in METHODS:
        values = [r[m] for r in rows]
        summary[m] = {
            "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        }
    best = max(("distill_then_finetune", "finetune_then_distill"), key=lambda m: summary[m]["mean"])
    gain = summary[best]["mean"] - summary["scratch"]["mean"]
    gap = summary["finetuned_teacher"]["mean"] - summary[best]["mean"]
    summary["best_strategy"] = best
    summary["gain_over_scratch_points"] = round(100 * gain, 2)
    summary["gap_to_finetuned_teacher_points"] = round(100 * gap, 2)
    summary["goal_gain_ge_2_points"] = gain >= 0.02
    summary["goal_within_1_point_of_teacher"] = gap <= 0.01
    summary["compression"] = rows[0]["compression"]
    summary["student_params"] = rows[0]["student_params"]
    summary["teacher_params"] = rows[0]["teacher_params"]
    return summary


def table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    head = f"| seed | {' | '.join(METHODS)} |"
    lines = [head, "|" + " --- |" * (len(METHODS) + 1)]
    for r in rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[m]:.3f}" for m in METHODS) + " |")
    lines.append(
        "| mean ± std | "
        + " | ".join(f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in METHODS)
        + " |"
    )
    return "\n".join(lines)


def run(
    quick: bool = False, seeds: tuple[int, ...] | None = None, student_width: float = 1.0
) -> dict[str, Any]:
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    h = Harness()
    student = {**STUDENT, "width": student_width}
    rows = [one_seed(h, s, quick, student) for s in seeds]
    summary = summarise(rows)
    return {
        "benchmark": "digits_transfer",
        "quick": quick,
        "rows": rows,
        "summary": summary,
        "table": table(rows, summary),
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--student-width", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args.quick, tuple(args.seeds) if args.seeds else None, args.student_width)
    sys.stdout.write(result["table"] + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "table"}) + "\n")


if __name__ == "__main__":
    main()
