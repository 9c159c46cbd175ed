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

`--defaults` asks what a user gets who types only epochs: the same task as uploaded .npz
files (source digits 0-4 labelled, 10 labelled images per target class, every training
image unlabelled for distillation, the target classes' test images as the evaluation
set), one `pipeline` job per seed with teacher 30, distill 40 and fine-tune 60 epochs and
every other setting at its default; its report holds the fine-tuned teacher, the student
and the scratch baseline.

    python -m bench.digits_transfer --defaults --student-width 0.25

`--variant` adds fields to the teacher, distill or fine-tune stage of that job (JSON, e.g.
'{"teacher": {"augment": "none"}}'), to compare a setting with the defaults in one run.
Each row also gives the fine-tuning stages' accuracy on the evaluation set after their
first epoch, at their best and at their last (`student_finetune_curve`,
`teacher_finetune_curve`): where fine-tuning on the few labels helps or overfits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from bench.harness import Harness, machine, mean_std

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

DEFAULT_EPOCHS = {"teacher": 30, "distill": 40, "finetune": 60}


def upload_task(h: Harness) -> dict[str, str]:
    """The few-shot task as a user would upload it: four .npz files; their ids."""
    from pathlib import Path

    from app.schemas.stage_spec import DatasetRef
    from worker.data import load_dataset

    def arrays(**ref: Any) -> Any:
        return load_dataset(DatasetRef(name="digits", **ref), data_root=Path(h.root), seed=0)

    source = arrays(classes=SOURCE["classes"])
    target = arrays(classes=TARGET["classes"], samples_per_class=TARGET["samples_per_class"])
    unlabelled = arrays()
    evaluation = arrays(classes=TARGET["classes"], split="test")
    return {
        "source": h.upload("source", source.x, source.y, source.class_names),
        "target": h.upload("target", target.x, target.y, target.class_names),
        "unlabelled": h.upload("unlabelled", unlabelled.x, None, []),
        "evaluation": h.upload("evaluation", evaluation.x, evaluation.y, evaluation.class_names),
    }


def defaults_seed(
    h: Harness,
    ids: dict[str, str],
    seed: int,
    student: dict[str, Any],
    variant: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """One pipeline job with only epochs set: teacher, student and baseline from its report.
    `variant` adds fields to the stages it names (`teacher`, `distill`, `finetune`): a
    variant to compare with the defaults."""
    variant = variant or {}
    job = h.run(
        {
            "kind": "pipeline",
            "name": f"defaults-{seed}",
            "seed": seed,
            "teacher": {
                "source": "train",
                "arch": "resnet18",
                "train": {
                    "dataset": {"id": ids["source"]},
                    "epochs": DEFAULT_EPOCHS["teacher"],
                    **variant.get("teacher", {}),
                },
            },
            "student": student,
            "distill": {
                "dataset": {"id": ids["unlabelled"]},
                "epochs": DEFAULT_EPOCHS["distill"],
                **variant.get("distill", {}),
            },
            "finetune": {
                "dataset": {"id": ids["target"]},
                "epochs": DEFAULT_EPOCHS["finetune"],
                **variant.get("finetune", {}),
            },
            "evaluate": {"dataset": {"id": ids["evaluation"]}},
        }
    )
    report = job["report"]
    # The student's accuracy on the evaluation set after each fine-tuning epoch: where
    # it starts (just distilled) and whether fine-tuning on the few labels helps.
    curve = accuracy_curve(h, job["id"], "finetune")
    teacher_curve = accuracy_curve(h, job["id"], "teacher_finetune")
    out = {
        "seed": seed,
        "scratch": report["baseline"]["accuracy"],
        "finetuned_teacher": report["teacher"]["accuracy"],
        "student": report["student"]["accuracy"],
        "strategy": report["strategy"],
        "student_params": report["student"]["params"],
        "teacher_params": report["teacher"]["params"],
        "compression": report["compression"],
        "stages": report["stages"],
        "seconds": job["seconds"],
        "summary": report["summary"],
        "student_finetune_curve": curve_summary(curve),
        "teacher_finetune_curve": curve_summary(teacher_curve),
    }
    log.info("seed %d: %s", seed, out)
    return out


def accuracy_curve(h: Harness, job_id: str, stage: str) -> list[float]:
    return [m["val_accuracy"] for m in h.metrics(job_id, stage) if "val_accuracy" in m]


def curve_summary(curve: list[float]) -> dict[str, float | None]:
    """Where a fine-tuning stage's evaluation accuracy started, peaked and ended."""
    if not curve:
        return {"first_epoch": None, "best": None, "last": None}
    return {"first_epoch": curve[0], "best": max(curve), "last": curve[-1]}


DEFAULT_METHODS = ["scratch", "finetuned_teacher", "student"]


def run_defaults(
    seeds: tuple[int, ...],
    student_width: float,
    variant: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    h = Harness()
    ids = upload_task(h)
    student = {**STUDENT, "width": student_width}
    variant = variant or {}
    rows = [defaults_seed(h, ids, s, student, variant) for s in seeds]
    summary: dict[str, Any] = {m: mean_std([r[m] for r in rows]) for m in DEFAULT_METHODS}
    gap = summary["finetuned_teacher"]["mean"] - summary["student"]["mean"]
    summary["gap_to_finetuned_teacher_points"] = round(100 * gap, 2)
    summary["goal_student_ge_0_95"] = summary["student"]["mean"] >= 0.95
    summary["goal_within_1_point_of_teacher"] = gap <= 0.01
    summary["goal_scratch_ge_0_85"] = summary["scratch"]["mean"] >= 0.85
    head = f"| seed | {' | '.join(DEFAULT_METHODS)} |"
    lines = [head, "|" + " --- |" * (len(DEFAULT_METHODS) + 1)]
    for r in rows:
        cells = " | ".join(f"{r[m]:.3f}" for m in DEFAULT_METHODS)
        lines.append(f"| {r['seed']} | {cells} |")
    means = " | ".join(
        f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in DEFAULT_METHODS
    )
    lines.append(f"| mean ± std | {means} |")
    return {
        "benchmark": "digits_transfer",
        "mode": "defaults",
        "variant": variant,
        "epochs": DEFAULT_EPOCHS,
        "rows": rows,
        "summary": summary,
        "table": "\n".join(lines),
        **machine(),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {m: mean_std([r[m] for r in rows]) for m in METHODS}
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
    parser.add_argument(
        "--defaults", action="store_true", help="only epochs in the spec, data uploaded"
    )
    parser.add_argument(
        "--teacher-augment",
        default=None,
        help="with --defaults: the source teacher's augmentation (e.g. crop), a --variant field",
    )
    parser.add_argument(
        "--distill-augment",
        default=None,
        help="with --defaults: the distill stage's augmentation (e.g. crop), a --variant field",
    )
    parser.add_argument(
        "--variant",
        type=json.loads,
        default=None,
        help="with --defaults, fields added to stages, as JSON: "
        '{"teacher": {...}, "distill": {...}, "finetune": {...}}',
    )
    args = parser.parse_args()
    variant: dict[str, dict[str, Any]] = args.variant or {}
    if not set(variant) <= {"teacher", "distill", "finetune"}:
        parser.error("--variant names only the stages teacher, distill and finetune")
    # The two augment flags are shorthands for a --variant field.
    for stage, augment in (("teacher", args.teacher_augment), ("distill", args.distill_augment)):
        if augment:
            variant.setdefault(stage, {})["augment"] = augment
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.defaults:
        result = run_defaults(
            tuple(args.seeds or (0, 1, 2)),
            args.student_width,
            variant,
        )
    else:
        result = run(args.quick, tuple(args.seeds) if args.seeds else None, args.student_width)
    sys.stdout.write(result["table"] + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "table"}) + "\n")


if __name__ == "__main__":
    main()
