"""`GET /api/v1/workers`: the live workers and what each can run."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class WorkerOut(BaseModel):
    id: str = Field(description="The worker's id (host:pid:random), as a running job's `worker`.")
    hostname: str = Field(description="The machine it runs on.")
    device: str = Field(description='Its training device: "cpu" or "cuda".')
    gpus: int = Field(description="GPUs it has (0 on a CPU worker).")
    gpu_memory_bytes: int = Field(description="Memory of its first GPU, in bytes (0 without).")
    labels: list[str] = Field(description="Its labels (STILLHOUSE_WORKER_LABELS).")
    started_at: datetime = Field(description="When it started.")
    last_seen: datetime = Field(
        description="Its last heartbeat (renewed every STILLHOUSE_HEARTBEAT_SECONDS)."
    )
    job_id: str | None = Field(description="The job it runs now; null when idle.")


class WorkerList(BaseModel):
    workers: list[WorkerOut] = Field(
        description="Workers seen within STILLHOUSE_STALE_AFTER_SECONDS, oldest first."
    )
