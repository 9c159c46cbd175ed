"""Database reads a job needs: its owner's uploads, checkpoints and earlier models.

Each read returns a typed record, its files fetched into this machine's artifact
directory from the shared store when they are not there yet (app/core/artifacts.py);
a row that is gone (deleted after the job was
submitted, which the API refuses while the job is unfinished) is a MissingResourceError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from app.core.artifacts import artifact_store
from app.core.model_format import StoredModel, model_folder
from app.models import Checkpoint, Dataset, TrainedModel


class MissingResourceError(LookupError):
    """A referenced upload or model is gone (deleted after the job was submitted)."""


@dataclass(frozen=True)
class CheckpointRecord:
    """An uploaded checkpoint: its weights file and what the upload recorded about it."""

    id: str
    path: Path
    arch: str
    num_classes: int
    # in_channels, width, input_size, mean, std, class_names (see services/checkpoints.py).
    meta: dict[str, Any]


@dataclass
class Lookups:
    engine: Engine
    owner: str
    artifact_dir: Path

    def _one(self, model: Any, id_: str, what: str) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(model).where(model.id == id_, model.owner == self.owner)
            ).first()
        if row is None:
            raise MissingResourceError(f"{what} {id_} does not exist (deleted?)")
        return row

    def _local(self, path: Path) -> Path:
        artifact_store(self.artifact_dir).pull(path)
        return path

    def dataset_path(self, dataset_id: str) -> Path:
        row = self._one(Dataset, dataset_id, "dataset")
        return self._local(self.artifact_dir / row.path)

    def checkpoint(self, checkpoint_id: str) -> CheckpointRecord:
        row = self._one(Checkpoint, checkpoint_id, "checkpoint")
        return CheckpointRecord(
            row.id,
            self._local(self.artifact_dir / row.path),
            row.arch,
            row.num_classes,
            dict(row.meta or {}),
        )

    def model(self, model_id: str) -> StoredModel:
        row = self._one(TrainedModel, model_id, "model")
        folder = self._local(model_folder(self.artifact_dir, row.artifact_path))
        return StoredModel(row.id, folder, dict(row.meta))
