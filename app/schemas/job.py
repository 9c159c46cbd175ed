"""Job bodies the API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import NEXT_PAGE_TOKEN


class Progress(BaseModel):
    """Where a job is; every field is null until the worker has reported it."""

    stage: str | None = Field(
        None,
        description="The stage running now (teacher, teacher_finetune, distill, finetune, "
        "baseline, train; distill.c0, finetune.c0, ... in a size search); done once the job "
        "has succeeded.",
    )
    epoch: int | None = Field(
        None, description="The epoch under way in the stage, counted from 1 (0 as it starts)."
    )
    epochs: int | None = Field(None, description="Epochs the current stage runs in all.")
    step: int | None = Field(
        None,
        description="Optimiser steps taken so far in the current stage, over all its epochs.",
    )
    steps: int | None = Field(
        None, description="Optimiser steps the current stage takes in all (epochs x batches)."
    )
    fraction: float | None = Field(None, description="Done fraction of the current stage, 0-1.")
    eta_seconds: float | None = Field(
        None, description="Seconds left in the current stage, from the measured step time."
    )
    loss: float | None = Field(None, description="Running mean training loss of the epoch.")


class JobError(BaseModel):
    """Why a job FAILED."""

    code: str = Field(
        description="What kind of failure, for programs: unavailable, weights_unavailable, "
        "incompatible_data, incompatible_weights, unlabelled_data, bad_spec, diverged, "
        "constraints_unmet, worker_lost or internal."
    )
    message: str = Field(
        description="What went wrong and, where it can, what to change, for a person to read."
    )


class JobOut(BaseModel):
    """A submitted job: its spec, where it is, and (once finished) its outcome."""

    id: str = Field(description="The job's id (a UUID).")
    kind: str = Field(description="pipeline, distill, finetune or train (the spec's `kind`).")
    name: str | None = Field(description="The spec's `name`; null when it has none.")
    state: str = Field(
        description="QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED or CANCELLED. A job whose "
        "worker dies goes back to QUEUED and resumes from its last checkpoint."
    )
    spec: dict[str, Any] = Field(description="The spec as accepted, defaults filled in.")
    stage: str | None = Field(
        description="The stage running now, or the last one that ran once the job has "
        "finished; null until a worker starts it."
    )
    progress: Progress = Field(
        description="Progress of the current stage; always present, its fields null until known."
    )
    metrics: dict[str, Any] | None = Field(description="The latest metrics.")
    error: JobError | None = Field(description="Why the job FAILED; null otherwise.")
    attempts: int = Field(
        description="How many times a worker has started the job (a worker shut down cleanly "
        "gives its start back)."
    )
    max_attempts: int = Field(
        description="Starts allowed before a job whose worker keeps dying is FAILED with "
        "worker_lost: the spec's `max_attempts`, else the server's default."
    )
    created_at: datetime = Field(description="When it was submitted, RFC 3339 in UTC.")
    started_at: datetime | None = Field(
        description="When a worker first started it; null while it has never run."
    )
    finished_at: datetime | None = Field(
        description="When it reached SUCCEEDED, FAILED or CANCELLED; null before."
    )
    model_id: str | None = Field(description="The finished model (the student), once succeeded.")
    waiting_reason: str | None = Field(
        None,
        description="Why a QUEUED job is not starting: no live worker at all, or none with "
        "the GPUs and labels its `resources` ask for (GET /api/v1/workers); null while some "
        "live worker could claim it, and once it has started.",
    )
    report: dict[str, Any] | None = Field(
        None,
        description="Distill and pipeline jobs: teacher vs student figures (see "
        "docs/pipeline.md). Any job whose spec asked for int8 (`export.int8`): `student.int8`, "
        "the int8 model against fp32, and `student.serving.precision`, the one served "
        "(docs/serving.md), with a `summary` line.",
    )


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""

    jobs: list[JobOut] = Field(description="At most `page_size` jobs, newest first.")
    next_page_token: str | None = Field(description=NEXT_PAGE_TOKEN)


class MetricPoint(BaseModel):
    """One epoch's figures, as its `metric` event carried them."""

    event_id: int = Field(
        description="The id of the `metric` event on the job's event stream (usable as "
        "Last-Event-ID or ?after= there)."
    )
    stage: str | None = Field(description="The stage the epoch belongs to.")
    epoch: int | None = Field(description="The epoch's number in its stage, counted from 1.")
    time: datetime = Field(description="When the epoch's figures were recorded, RFC 3339 in UTC.")
    values: dict[str, Any] = Field(
        description="The epoch's figures: train_loss (mean over the epoch), lr (at its end) "
        "and train_accuracy (with class labels); when the epoch was evaluated, the evaluation "
        "set's figures prefixed val_ (val_loss, val_accuracy; val_mse and val_mae for "
        "regression targets; val_agreement, how often the student's top class is the "
        "teacher's, in a distill stage)."
    )


class MetricHistory(BaseModel):
    """Every epoch's figures of one job."""

    job_id: str = Field(description="The job they belong to.")
    metrics: list[MetricPoint] = Field(description="Every epoch's metrics, in order.")
    stages: dict[str, list[dict[str, Any]]] = Field(
        description="The same, grouped by stage: {stage: [{epoch, ...values}]}."
    )
