"""The job spec's `resources`: what a worker must have to claim the job."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Resources(BaseModel):
    """Which workers may claim the job (their GPUs and labels, GET /api/v1/workers)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs the claiming worker must have (0: any worker, a CPU one too). "
        "The job trains on one of them.",
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=16,
        description="Labels the claiming worker must all have (its STILLHOUSE_WORKER_LABELS): "
        "letters, digits and `_.:-`, at most 64 characters each.",
    )

    @field_validator("labels")
    @classmethod
    def _sorted(cls, labels: list[str]) -> list[str]:
        return sorted(set(labels))

    def column(self) -> str:
        """The labels as the jobs table stores them: sorted, comma-joined ('' for none)."""
        return ",".join(self.labels)

    def met_by(self, gpus: int, labels: list[str]) -> bool:
        return gpus >= self.gpus and set(self.labels) <= set(labels)

    def describe(self) -> str:
        parts = []
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}")
        if self.labels:
            parts.append("labels " + ", ".join(self.labels))
        return " and ".join(parts) if parts else "nothing in particular"
