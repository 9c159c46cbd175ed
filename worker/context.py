"""What every stage of a running job is handed: the job's context, and how it ends.

`JobContext` carries the job's identity, settings, device, cancel control, event
reporter, checkpoint store and database lookups; `JobOutcome` is what a successful job
hands back to the worker's final transaction; `JobFailedError` is a failure with a code
and a message the user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.config import Settings
from app.core.datasets import InMemoryData
from app.schemas.stage_spec import DatasetRef
from worker.checkpoints import CheckpointStore
from worker.control import JobControl
from worker.data import load_dataset
from worker.events import Reporter
from worker.export import ExportedModel
from worker.lookups import Lookups


class JobFailedError(RuntimeError):
    """A failure with a code and a message the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JobContext:
    job_id: str
    owner: str
    name: str | None
    settings: Settings
    # Where this job trains, and where its report times latency (the serving device).
    device: torch.device
    serving_device: torch.device
    control: JobControl
    reporter: Reporter
    store: CheckpointStore
    lookups: Lookups
    # Data-parallel processes that train each stage (the spec's resources; worker/parallel.py).
    processes: int = 1

    def load_data(self, ref: DatasetRef, *, seed: int) -> InMemoryData:
        """A dataset reference, loaded with its filters (an upload read from the store)."""
        uploaded = self.lookups.dataset_path(ref.id) if ref.id is not None else None
        # A dataset by URL is held in memory when it fits the bound every dataset in
        # memory has (STILLHOUSE_MAX_UPLOAD_BYTES x 4); a larger one is streamed.
        data = load_dataset(
            ref,
            data_root=self.settings.data_root,
            seed=seed,
            uploaded_path=uploaded,
            memory_bytes=self.settings.max_dataset_bytes,
        )
        if data.streamed:
            self.reporter.log(
                f"{data.description}: {len(data)} images decode to more than "
                f"{self.settings.max_dataset_bytes} bytes; read from their URL every epoch"
            )
        return data


@dataclass
class JobOutcome:
    """What a successful job hands back to the worker for the final transaction."""

    model: ExportedModel | None
    metrics: dict[str, Any]
    report: dict[str, Any] | None = None
