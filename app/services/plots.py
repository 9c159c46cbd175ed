"""Plots of a job: learning curves (every job that trained) and the Pareto front of a
student size search. Drawn on request from the stored metric events and report, so a
running job's curves are current."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

from app.schemas.job import MetricHistory

# One lock-free figure per call; pyplot's global state is guarded by the caller's thread.
DPI = 110


def learning_curves(history: MetricHistory, *, title: str, fmt: str) -> bytes | None:
    """Training loss and validation figures per epoch, one column per stage."""
    stages = {k: v for k, v in history.stages.items() if v}
    if not stages:
        return None
    fig, axes = plt.subplots(
        2, len(stages), figsize=(4.2 * len(stages), 6), squeeze=False, sharex="col"
    )
    for col, (stage, points) in enumerate(stages.items()):
        epochs = [p["epoch"] for p in points]
        loss_ax, val_ax = axes[0][col], axes[1][col]
        loss_ax.plot(epochs, [p.get("train_loss") for p in points], marker=".", label="train loss")
        loss_ax.set_title(stage)
        loss_ax.set_ylabel("loss")
        loss_ax.grid(alpha=0.3)
        for key, label in (
            ("train_accuracy", "train accuracy"),
            ("val_accuracy", "eval accuracy"),
            ("val_agreement", "agreement with teacher"),
        ):
            values = [p.get(key) for p in points]
            if any(v is not None for v in values):
                val_ax.plot(epochs, values, marker=".", label=label)
        val_ax.set_ylim(0, 1.02)
        val_ax.set_xlabel("epoch")
        val_ax.set_ylabel("fraction")
        val_ax.grid(alpha=0.3)
        val_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _render(fig, fmt)


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
