"""How a job reads on a terminal: its stages, one whole-job progress line, event lines.

`follow` draws the progress line from a job's event stream (`app.client`); the plain
lines are for `stillhouse status`, `jobs` and `logs`.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from app.client import Client

FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}
# States in which a job has a stage under way.
ACTIVE_STATES = ("RUNNING", "CANCELLING")
# Shown between the parts of a progress line (ASCII: any terminal encoding takes it).
SEP = " | "
# A stage's accuracy on the progress line: the first of these its metrics carry (a
# distillation without labels measures the student's agreement with the teacher).
ACCURACIES = (
    ("val_accuracy", "val acc"),
    ("train_accuracy", "train acc"),
    ("val_agreement", "val agreement"),
)


# ---------------------------------------------------------------------- formatting
def duration(seconds: float) -> str:
    """1h02m, 3m20s, 45s."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def number(value: Any) -> str:
    """A figure short enough for a line: floats to four significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------- stage plan
# PipelineJobSpec's default strategy (not imported: the client stays light).
DEFAULT_STRATEGY = "finetune_then_distill"


@dataclass(frozen=True)
class StagePlan:
    """The stages a job's spec runs, in order, each with its epochs (None: not known).

    `exact` is False where the worker decides at run time: a size search with budgets may
    skip candidates, an unset `baseline` runs only for small students, and with
    distill_then_finetune the teacher is fine-tuned for the report only when it predicts
    other classes than the target's."""

    stages: tuple[tuple[str, int | None], ...]
    exact: bool


def stage_plan(spec: dict[str, Any]) -> StagePlan:
    """The stages the worker runs for `spec` (as the API returns it, defaults filled in),
    named as its progress events name them (worker/job_kinds.py)."""

    def epochs(stage: Any) -> int | None:
        return stage.get("epochs") if isinstance(stage, dict) else None

    kind = spec.get("kind")
    if kind == "train":
        return StagePlan((("train", epochs(spec.get("train"))),), True)
    stages: list[tuple[str, int | None]] = []
    teacher = spec.get("teacher")
    if isinstance(teacher, dict) and teacher.get("source") == "train":
        stages.append(("teacher", epochs(teacher.get("train"))))
    if kind in ("distill", "finetune"):
        return StagePlan((*stages, (kind, epochs(spec.get(kind)))), True)
    if kind != "pipeline":
        return StagePlan((), False)
    distill, finetune = epochs(spec.get("distill")), epochs(spec.get("finetune"))
    exact = True
    strategy = spec.get("strategy", DEFAULT_STRATEGY)
    if strategy == "finetune_then_distill":
        stages.append(("teacher_finetune", finetune))
    student = spec.get("student") or {}
    candidates = student.get("candidates")
    if candidates is None:
        stages += [("distill", distill), ("finetune", finetune)]
    else:
        for i in range(len(candidates)):
            stages += [(f"distill.c{i}", distill), (f"finetune.c{i}", finetune)]
        exact = not any(v is not None for v in (student.get("constraints") or {}).values())
    if strategy != "finetune_then_distill" and spec.get("teacher_on_target") is not False:
        # The report's teacher, fine-tuned on the target after the student: skipped when
        # the teacher already predicts the target's classes (or is over the size that
        # runs it by default), which the spec cannot say.
        stages.append(("teacher_finetune", finetune))
        exact = False
    baseline = spec.get("baseline")
    if baseline or baseline is None:
        stages.append(("baseline", finetune))
        exact = exact and baseline is not None
    return StagePlan(tuple(stages), exact)


# ------------------------------------------------------------------- job progress
class JobProgress:
    """What is known of a job's progress, as one line for the whole job: its state, the
    stage among all the job's stages, epoch, loss, accuracy and the time left.

    Seeded from the job as fetched, then fed its events (`update`). The worker's
    `eta_seconds` covers the current stage only; the time left for the job adds the
    stages still to come, each estimated at the current stage's time per epoch, and is
    marked "~" as the estimate it is. Where a later stage's epochs are unknown, only the
    stage's ETA is shown, and called that.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        plan = stage_plan(job.get("spec") or {})
        self.stages = [name for name, _ in plan.stages]
        self.epochs: dict[str, int | None] = dict(plan.stages)
        self.exact = plan.exact
        self.state: str = job.get("state") or "QUEUED"
        self.stage: str | None = None
        self.progress: dict[str, Any] = {}
        self.accuracy: tuple[str, float] | None = None
        self.epoch_seconds: float | None = None
        self.job = job
        if job.get("stage"):
            self.update("progress", {**(job.get("progress") or {}), "stage": job["stage"]})
            self.update("metric", job.get("metrics") or {})

    def update(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "state":
            self.state = data.get("state") or self.state
        elif event_type == "progress" and data.get("stage"):
            if data["stage"] != self.stage:
                self._enter(data["stage"])
            self.progress = data
            if data.get("epochs"):
                self.epochs[data["stage"]] = data["epochs"]
            self._measure(data)
        elif event_type == "metric" and data.get("stage") == self.stage:
            for key, label in ACCURACIES:
                if isinstance(data.get(key), int | float):
                    self.accuracy = (label, float(data[key]))
                    break
            self._epoch_done(data.get("epoch"))

    def finish(self, job: dict[str, Any]) -> None:
        """The job as fetched after its final event: the final line reads from it."""
        self.job = job
        self.state = job.get("state") or self.state

    def _enter(self, stage: str) -> None:
        if stage not in self.stages and self.stage in self.stages:
            # A stage the spec did not foretell (the worker chose it): it follows the last,
            # and the count of stages is an estimate from now on. (Without a stage before
            # it, its place is unknown: it goes by its name alone.)
            self.stages.insert(self.stages.index(self.stage) + 1, stage)
            self.exact = False
        self.stage, self.progress, self.accuracy = stage, {}, None

    def _epoch_done(self, epoch: Any) -> None:
        """Progress is written every second or so, metrics every epoch: where epochs are
        short, the metric is the newer news. Move the line on, and the stage's ETA down
        by the epochs it skipped, so that neither lags."""
        epochs, shown = self.progress.get("epochs"), self.progress.get("epoch") or 0
        if not isinstance(epoch, int) or not epochs or epoch <= shown:
            return
        eta = self.progress.get("eta_seconds")
        if eta is not None and self.epoch_seconds is not None:
            eta = max(0.0, eta - (epoch - shown) * self.epoch_seconds)
        self.progress = {
            **self.progress,
            "epoch": epoch,
            "fraction": epoch / epochs,
            "eta_seconds": eta,
        }

    def _measure(self, data: dict[str, Any]) -> None:
        eta, fraction, epochs = data.get("eta_seconds"), data.get("fraction"), data.get("epochs")
        if eta is None or fraction is None or not epochs:
            return
        left = epochs * (1 - fraction)
        # Near a stage's end the ratio divides by almost nothing: keep the last estimate.
        if left >= 0.25:
            self.epoch_seconds = eta / left

    def position(self) -> str | None:
        """The current stage among the job's stages, as "2/4 distill" ("2/~4" when the
        worker may yet add or skip some)."""
        if self.stage is None:
            return None
        if self.stage not in self.stages:
            return self.stage
        total = f"{'' if self.exact else '~'}{len(self.stages)}"
        return f"{self.stages.index(self.stage) + 1}/{total} {self.stage}"

    def eta(self) -> str | None:
        stage_eta = self.progress.get("eta_seconds")
        if stage_eta is None or self.stage not in self.stages:
            return None
        later = self.stages[self.stages.index(self.stage) + 1 :]
        if not later:
            return f"ETA {'' if self.exact else '~'}{duration(stage_eta)}"
        later_epochs = [self.epochs.get(name) for name in later]
        if self.epoch_seconds is None or None in later_epochs:
            return f"stage ETA {duration(stage_eta)}"
        total = stage_eta + self.epoch_seconds * sum(e or 0 for e in later_epochs)
        return f"ETA ~{duration(total)}"

    def stage_detail(self) -> list[str]:
        """Where the current stage is: epoch, loss, accuracy, time left."""
        p = self.progress
        parts: list[str] = []
        if p.get("epoch") == 0:
            parts.append("starting")
        elif p.get("epoch") is not None:
            fraction = p.get("fraction")
            done = f" ({fraction:.0%})" if fraction is not None else ""
            parts.append(f"epoch {p['epoch']}/{p.get('epochs') or '?'}{done}")
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.4f}")
        if self.accuracy is not None:
            parts.append(f"{self.accuracy[0]} {self.accuracy[1]:.3f}")
        eta = self.eta()
        if eta is not None:
            parts.append(eta)
        return parts

    def line(self) -> str:
        where = self.position()
        if self.state in FINAL_STATES:
            return SEP.join([self.state, *self._outcome(where)])
        # RUNNING goes without saying once a stage shows; the line is read at a glance.
        parts = [] if self.state == "RUNNING" else [self.state]
        if where is not None:
            parts.append(f"stage {where}")
        if self.state in ACTIVE_STATES:
            parts += self.stage_detail()
        elif self.state == "QUEUED":
            parts.append("waiting for a worker")
        return SEP.join(parts) or self.state

    def _outcome(self, where: str | None) -> list[str]:
        job = self.job
        parts: list[str] = []
        if self.state != "SUCCEEDED" and where is not None:
            parts.append(f"last stage {where}")
        accuracy = (job.get("metrics") or {}).get("accuracy")
        if self.state == "SUCCEEDED" and isinstance(accuracy, int | float):
            parts.append(f"accuracy {accuracy:.3f}")
        error = job.get("error")
        if error:
            parts.append(f"{error.get('code')}: {error.get('message')}")
        took = elapsed(job.get("started_at"), job.get("finished_at"))
        if took is not None:
            parts.append(f"took {duration(took)}")
        return parts


def elapsed(start: str | None, end: str | None) -> float | None:
    """Seconds between two RFC 3339 times of the API (None if either is missing)."""
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def follow(client: Client, job: dict[str, Any], out: TextIO = sys.stderr) -> dict[str, Any]:
    """Follow `job`'s events as one whole-job progress line, redrawn in place on a
    terminal and written once, when the job ends, elsewhere; the job's log events print
    above it. Returns the final job."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(file=out, highlight=False)
    progress = JobProgress(job)

    # Transient: the live line goes when the job ends, and the final one is printed in
    # its place, the same on a terminal as in a log file.
    def current() -> Text:
        # Cut, not wrapped, at the terminal's width: one line, always.
        return Text(progress.line(), no_wrap=True, overflow="ellipsis")

    live = (
        Live(current(), console=console, auto_refresh=False, transient=True)
        if console.is_terminal
        else None
    )
    with live or nullcontext():
        for event_type, data in client.events(job["id"]):
            progress.update(event_type, data)
            if event_type == "log":
                console.print(Text(event_line(event_type, data)), soft_wrap=True)
            if live is not None:
                live.update(current(), refresh=True)
            if event_type == "state" and data.get("state") in FINAL_STATES:
                break
    final = client.job(job["id"])
    progress.finish(final)
    console.print(Text(progress.line()), soft_wrap=True)
    return final


def event_line(event_type: str, data: dict[str, Any]) -> str:
    """One event of a job's stream as a readable line, its type first."""
    if event_type == "progress":
        text = _progress_text(data)
    elif event_type == "metric":
        text = metric_text(data)
    elif event_type == "log":
        where = f" ({data['stage']})" if data.get("stage") else ""
        text = f"{data.get('level', 'info')}: {data.get('message', '')}{where}"
    elif event_type == "state":
        text = _state_text(data)
    else:
        text = json.dumps(data)
    return f"{event_type:<8} {text}"


def metric_text(data: dict[str, Any]) -> str:
    """Metrics as "distill epoch 3: train_loss 0.1234, val_accuracy 0.95" (a stage's
    epoch), or just the figures (a finished job's evaluation). Sorted by name: Postgres
    (JSONB) does not keep the order the worker wrote them in."""
    values = ", ".join(
        f"{k} {number(data[k])}" for k in sorted(data) if k not in ("stage", "epoch")
    )
    if data.get("stage") is None:
        return values
    return f"{data['stage']} epoch {data.get('epoch')}: {values}"


def _progress_text(data: dict[str, Any]) -> str:
    stage = data.get("stage")
    if data.get("epoch") == 0:
        return f"{stage}: {data.get('message') or 'started'}, {data.get('epochs')} epochs"
    parts = [f"{stage} epoch {data.get('epoch')}/{data.get('epochs')}"]
    if data.get("fraction") is not None:
        parts.append(f"{data['fraction']:.0%}")
    if data.get("loss") is not None:
        parts.append(f"loss {data['loss']:.4f}")
    if data.get("eta_seconds") is not None:
        parts.append(f"stage ETA {duration(data['eta_seconds'])}")
    return ", ".join(parts)


def _state_text(data: dict[str, Any]) -> str:
    parts = [str(data.get("state"))]
    for key in ("reason", "attempt", "worker", "model_id"):
        if data.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {data[key]}")
    error = data.get("error")
    if error:
        parts.append(f"{error.get('code')}: {error.get('message')}")
    return ", ".join(parts)
