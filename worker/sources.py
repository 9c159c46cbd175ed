"""Where a model's weights come from, resolved once per job: a `ModelSpec` and the rows
it names, read from the database one time, as a typed `ModelSource`.

A source says what the built model predicts when its weights fix it (a checkpoint's
head, an earlier model's classes and task, torchvision's ImageNet categories), or leaves
that to the data it trains on (`scratch`, `train`).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.archs import torchvision_weights
from app.core.model_format import StoredModel
from app.schemas.model_spec import ModelSpec
from worker.lookups import CheckpointRecord, Lookups


@dataclass(frozen=True)
class ModelSource:
    spec: ModelSpec
    # Outputs the weights come with, and their names; None where the data decides.
    num_classes: int | None = None
    class_names: list[str] | None = None
    # What the outputs are: "classification", or "regression" (an earlier model's).
    task: str = "classification"
    checkpoint: CheckpointRecord | None = None
    model: StoredModel | None = None

    @property
    def trained_here(self) -> bool:
        """Whether the network starts from random weights in this job (scratch, train)."""
        return self.spec.source in ("scratch", "train")


def resolve_source(lookups: Lookups, spec: ModelSpec) -> ModelSource:
    """`spec` with the rows it names read once (MissingResourceError if one is gone)."""
    if spec.source == "checkpoint":
        assert spec.checkpoint_id is not None
        ckpt = lookups.checkpoint(spec.checkpoint_id)
        names = ckpt.meta.get("class_names")
        if not names or len(names) != ckpt.num_classes:
            names = [str(i) for i in range(ckpt.num_classes)]
        return ModelSource(spec, ckpt.num_classes, list(names), checkpoint=ckpt)
    if spec.source == "model":
        assert spec.model_id is not None
        record = lookups.model(spec.model_id)
        return ModelSource(
            spec,
            int(record.meta["num_classes"]),
            list(record.meta["classes"]),
            str(record.meta.get("task", "classification")),
            model=record,
        )
    if spec.source == "torchvision":
        assert spec.arch is not None and spec.weights is not None
        categories = list(torchvision_weights(spec.arch, spec.weights).meta["categories"])
        return ModelSource(spec, len(categories), categories)
    return ModelSource(spec)
