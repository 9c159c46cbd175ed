"""Per-job checkpoints: a fit's state every epoch, and each finished stage's weights.

Files are written to a temporary name and renamed (app.core.files), so a worker killed
mid-write leaves the previous checkpoint intact; with a shared artifact store each file
is then copied there (app/core/artifacts.py), so that a worker on another machine
resumes from it. They are our own files, and still loaded with
`weights_only=True`: nothing in them is unpickled as code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from app.core.artifacts import ArtifactStore
from app.core.files import atomic_write


class CheckpointStore:
    def __init__(self, root: Path, artifacts: ArtifactStore | None = None) -> None:
        self.root = root
        # Without a shared store (tests, benchmarks) this one only removes local files.
        self.artifacts = artifacts or ArtifactStore(root)

    def _written(self, *paths: Path) -> None:
        for path in paths:
            self.artifacts.push(path)

    # -- a fit's state, every epoch
    def _fit_path(self, stage: str) -> Path:
        return self.root / f"{stage}.fit.pt"

    def save_fit(self, stage: str, state: dict[str, Any]) -> None:
        atomic_write(self._fit_path(stage), lambda p: torch.save(state, p))
        self._written(self._fit_path(stage))

    def load_fit(self, stage: str) -> dict[str, Any] | None:
        path = self._fit_path(stage)
        # A rank on another machine (a Ray cluster) has only the store's copy.
        if not path.exists() and not self.artifacts.pull(path):
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    # -- a finished stage's result: weights plus a small JSON record
    def _done_paths(self, stage: str) -> tuple[Path, Path]:
        return self.root / f"{stage}.done.safetensors", self.root / f"{stage}.done.json"

    def save_done(self, stage: str, model: nn.Module, record: dict[str, Any]) -> None:
        weights, meta = self._done_paths(stage)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(weights, lambda p: save_file(state, str(p)))
        # The record last: its presence means the stage finished.
        atomic_write(meta, lambda p: p.write_text(json.dumps(record)))
        self._written(weights, meta)
        self.artifacts.remove(self._fit_path(stage))
        self.artifacts.remove(self._outputs_path(stage))

    # -- a teacher's outputs over a stage's samples, kept until the stage is done
    def _outputs_path(self, stage: str) -> Path:
        return self.root / f"{stage}.teacher.safetensors"

    def save_outputs(self, stage: str, tensors: dict[str, torch.Tensor], key: str) -> None:
        """Keep a teacher's cached outputs (rows keyed by sample, see `load_outputs`), so a
        stage resumed on this or another machine does not run the teacher over its data
        again: over a streamed set that pass costs about an epoch."""
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        path = self._outputs_path(stage)
        atomic_write(path, lambda p: save_file(cpu, str(p), metadata={"key": key}))
        self._written(path)

    def load_outputs(self, stage: str, key: str) -> dict[str, torch.Tensor] | None:
        """The saved outputs when they were computed for `key` (the samples, the views
        and the layer, in one string), else None."""
        path = self._outputs_path(stage)
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None
        return load_file(str(path))

    def load_done(self, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        weights, meta = self._done_paths(stage)
        if not meta.exists():
            return None
        return load_file(str(weights)), json.loads(meta.read_text())

    def stage_seconds(self) -> dict[str, float]:
        """Training seconds of each finished stage, from their records."""
        out: dict[str, float] = {}
        for meta in sorted(self.root.glob("*.done.json")):
            record = json.loads(meta.read_text())
            out[meta.name.removesuffix(".done.json")] = record.get("seconds", 0.0)
        return out
