"""The worker's datasets: a reference loaded whole, as tensors, with its filters applied,
and the index batches of an epoch.

What exists and how each source is read is the shared catalog's (app.core.datasets);
the filters of a reference (`classes`, `samples_per_class`, `image_size`, `labels`)
apply here, the same way to every source.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from app.core.datasets import DatasetUnavailableError, InMemoryData, load_source, resolve_classes
from app.core.datasets.stored import read_dataset
from app.core.images import resize_images
from app.schemas.job_spec import DatasetRef

log = logging.getLogger(__name__)


def load_dataset(
    ref: DatasetRef,
    *,
    data_root: Path,
    seed: int,
    uploaded_path: Path | None = None,
    download: bool = True,
) -> InMemoryData:
    """Load a dataset reference with its filters applied."""
    if ref.id is not None:
        if uploaded_path is None:
            raise DatasetUnavailableError(f"dataset {ref.id} has no stored file")
        data = read_dataset(uploaded_path, ref.split)
    elif ref.split == "all":
        parts = [
            load_source(ref.model_copy(update={"split": split}), data_root, download=download)
            for split in ("train", "test")
        ]
        data = InMemoryData(
            torch.cat([p.x for p in parts]),
            None if parts[0].y is None else torch.cat([p.y for p in parts]),  # type: ignore[misc]
            parts[0].class_names,
            parts[0].scale,
            parts[0].description.rsplit("/", 1)[0] + "/all",
        )
    else:
        data = load_source(ref, data_root, download=download)
    return apply_filters(data, ref, seed=seed)


def apply_filters(data: InMemoryData, ref: DatasetRef, *, seed: int) -> InMemoryData:
    x, y, names = data.x, data.y, data.class_names
    # Class filters mean nothing for regression targets (the spec check refuses them).
    labels = y is not None and not y.is_floating_point()
    keep_classes = resolve_classes(ref, names) if labels else None
    if keep_classes is not None and y is not None:
        # Relabel to 0..k-1 in the order given, so the head has exactly k outputs.
        lut = torch.full((max(len(names), int(y.max()) + 1),), -1, dtype=torch.int64)
        for new, old in enumerate(keep_classes):
            lut[old] = new
        mapped = lut[y]
        mask = mapped >= 0
        x, y = x[mask], mapped[mask]
        names = [names[i] for i in keep_classes]
    if ref.samples_per_class is not None and y is not None and labels:
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(len(names)):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)[: ref.samples_per_class]]
            picks.append(idx)
        order = torch.sort(torch.cat(picks)).values
        x, y = x[order], y[order]
    if ref.image_size is not None and x.shape[-1] != ref.image_size:
        x = resize_images(x, ref.image_size)
    if not ref.labels:
        y = None
    return InMemoryData(x.contiguous(), y, names, data.scale, data.description, data.extra)


def epoch_batches(
    n: int, batch_size: int, *, gen: torch.Generator, shuffle: bool
) -> list[torch.Tensor]:
    """Index batches for one epoch; the last partial batch is kept (small few-shot sets)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
