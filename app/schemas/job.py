"""Job bodies the API answers with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Progress(BaseModel):
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float | None = Field(None, description="Done fraction of the current stage, 0-1.")
    eta_seconds: float | None = Field(
        None, description="Seconds left in the current stage, from the measured step time."
    )
    loss: float | None = Field(None, description="Running mean training loss of the epoch.")


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    kind: str
    name: str | None
    state: str
    spec: dict[str, Any] = Field(description="The spec as accepted, defaults filled in.")
    stage: str | None
    progress: Progress
    metrics: dict[str, Any] | None = Field(description="The latest metrics.")
    error: JobError | None
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model_id: str | None = Field(description="The finished model (the student), once succeeded.")
    report: dict[str, Any] | None = Field(
        None, description="Pipeline jobs: teacher vs student figures (see docs/report.md)."
    )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None


class MetricPoint(BaseModel):
    event_id: int
    stage: str | None
    epoch: int | None
    time: datetime
    values: dict[str, Any]


class MetricHistory(BaseModel):
    job_id: str
    metrics: list[MetricPoint] = Field(description="Every epoch's metrics, in order.")
    stages: dict[str, list[dict[str, Any]]] = Field(
        description="The same, grouped by stage: {stage: [{epoch, ...values}]}."
    )
