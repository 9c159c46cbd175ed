"""Database reads a job needs: its owner's uploads, checkpoints and earlier models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from app.models import Checkpoint, Dataset, TrainedModel


class MissingResourceError(LookupError):
    """A referenced upload or model is gone (deleted after the job was submitted)."""


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

    def dataset_path(self, dataset_id: str) -> Path:
        row = self._one(Dataset, dataset_id, "dataset")
        return self.artifact_dir / row.path

    def checkpoint(self, checkpoint_id: str) -> tuple[Path, str, int, dict[str, Any]]:
        row = self._one(Checkpoint, checkpoint_id, "checkpoint")
        return self.artifact_dir / row.path, row.arch, row.num_classes, dict(row.meta or {})

    def model(self, model_id: str) -> tuple[Path, dict[str, Any]]:
        row = self._one(TrainedModel, model_id, "model")
        return self.artifact_dir / row.artifact_path, dict(row.meta)
