"""Plots of a job: learning curves (every job that trained) and the Pareto front of a
student size search. Drawn on request from the stored metric events and report, so a
running job's curves are current."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from app.schemas.job import MetricHistory

# One lock-free figure per call; pyplot's global state is guarded by the caller's thread.
DPI = 110


# What each panel plots: (metric key, legend label). Loss above, fractions below.
LOSS_CURVES = (
    ("train_loss", "train loss"),
    ("val_loss", "eval loss"),
    ("val_mse", "eval mse"),
)
FRACTION_CURVES = (
    ("train_accuracy", "train accuracy"),
    ("val_accuracy", "eval accuracy"),
    ("val_agreement", "agreement with the teacher"),
)


def learning_curves(history: MetricHistory, *, title: str, fmt: str) -> bytes | None:
    """Loss (train and evaluation) above, accuracy and agreement below, per epoch, one
    column per stage. A distill stage plots agreement with the teacher; accuracy there
    only where the distill set's labels are the teacher's classes (the stage then
    reports it)."""
    stages = {k: v for k, v in history.stages.items() if v}
    if not stages:
        return None
    fig, axes = plt.subplots(
        2, len(stages), figsize=(4.2 * len(stages), 6), squeeze=False, sharex="col"
    )
    for col, (stage, points) in enumerate(stages.items()):
        epochs = [p["epoch"] for p in points]
        loss_ax, frac_ax = axes[0][col], axes[1][col]
        _plot(loss_ax, epochs, points, LOSS_CURVES)
        loss_ax.set_title(stage)
        loss_ax.set_ylabel("loss")
        if not _plot(frac_ax, epochs, points, _fraction_curves(stage, points)):
            frac_ax.text(0.5, 0.5, "no accuracy for this stage", ha="center", va="center")
        frac_ax.set_ylim(0, 1.02)
        frac_ax.set_xlabel("epoch")
        frac_ax.set_ylabel("fraction")
        for ax in (loss_ax, frac_ax):
            # Epochs are whole numbers: no 1.5 on the axis.
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _render(fig, fmt)


def _fraction_curves(stage: str, points: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """Accuracy against labels, except in a distill stage whose labels are not the
    teacher's classes (it evaluates agreement only): jobs stored before the stage stopped
    reporting a train accuracy there still have one, which would read as a failure."""
    labelled = any(p.get("val_accuracy") is not None for p in points)
    if stage.startswith("distill") and not labelled:
        return tuple(c for c in FRACTION_CURVES if c[0] == "val_agreement")
    return FRACTION_CURVES


def _plot(
    ax: Any, epochs: list[int], points: list[dict[str, Any]], curves: tuple[tuple[str, str], ...]
) -> bool:
    """Plot each curve that has values; whether any did."""
    drawn = False
    for key, label in curves:
        values = [p.get(key) for p in points]
        if any(v is not None for v in values):
            ax.plot(epochs, values, marker=".", label=label)
            drawn = True
    if drawn:
        ax.legend(loc="best", fontsize=8)
    return drawn


def pareto(report: dict[str, Any], *, title: str, fmt: str) -> bytes | None:
    """Accuracy against parameters for each size-search candidate (and the teacher)."""
    candidates = report.get("candidates")
    if not candidates:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    chosen = report.get("chosen")
    for entry in candidates:
        acc = entry.get("accuracy")
        params = entry.get("params")
        if params is None:
            continue
        label = f"#{entry['index']} {entry.get('arch', '')} w={entry.get('width', '')}"
        if entry.get("precision") == "int8":
            label += " int8"
        if entry["index"] == chosen:
            ax.scatter([params], [acc or 0], s=120, marker="*", color="tab:red", zorder=3)
            label += " (chosen)"
        elif entry.get("skipped"):
            ax.scatter([params], [acc or 0], marker="x", color="grey")
            label += " (skipped)"
        else:
            ax.scatter([params], [acc or 0], color="tab:blue")
        ax.annotate(
            label, (params, acc or 0), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    teacher = report.get("teacher") or {}
    if teacher.get("accuracy") is not None:
        ax.scatter([teacher["params"]], [teacher["accuracy"]], marker="s", color="black")
        ax.annotate(
            "teacher",
            (teacher["params"], teacher["accuracy"]),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    floor = (report.get("constraints") or {}).get("min_accuracy")
    if floor is not None:
        ax.axhline(floor, linestyle="--", color="tab:red", alpha=0.5, label="min_accuracy")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log)")
    ax.set_ylabel("accuracy on the evaluation set")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return _render(fig, fmt)


def _render(fig: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI)
    plt.close(fig)
    return buf.getvalue()
