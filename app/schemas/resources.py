"""The job spec's `resources`: what a worker must have to claim the job."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Resources(BaseModel):
    """Which workers may claim the job (their GPUs and labels, GET /api/v1/workers)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs the claiming worker must have (0: any worker, a CPU one too). "
        "With 2 or more the job's training stages run as that many data-parallel "
        "processes, one per GPU (torch.distributed, DDP).",
    )
    processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Data-parallel training processes (torch.distributed, DDP). Default: "
        "`gpus`, or 1. On a worker without GPUs they share its cores (gloo); on a GPU "
        "worker each takes one GPU, so at most `gpus` when `gpus` is set.",
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

    @field_validator("processes")
    @classmethod
    def _one_gpu_per_process(cls, processes: int | None, info: ValidationInfo) -> int | None:
        gpus = info.data.get("gpus", 0)
        if gpus and processes is not None and processes > gpus:
            raise ValueError(
                f"{processes} processes for {gpus} GPUs: each process trains on its own GPU, "
                "so at most `gpus`"
            )
        return processes

    def world_size(self) -> int:
        """How many processes train the job's stages."""
        return self.processes if self.processes is not None else max(1, self.gpus)

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
