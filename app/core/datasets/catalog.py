"""The dataset catalog: which datasets exist, what is known of each without loading it,
and the rules every source shares (the holdout split, regression target names, class
filters).

`@register_dataset("name", info=...)` adds a source: `info(ref)` answers the API's spec
check (classes, channels, size, scale, split sizes) without touching any data, and the
decorated `load(ref, data_root)` gives the worker a whole split as tensors
(`InMemoryData`). The built-in sources (`digits`, `synthetic`, `torchvision:<Name>`) live
in `app.core.datasets.builtin`; uploads (`{"id": ...}`) are read by
`app.core.datasets.stored`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.core.registry import Registry
from app.schemas.stage_spec import DatasetRef

if TYPE_CHECKING:
    from app.core.datasets.streamed import StreamedImages


class DatasetUnavailableError(RuntimeError):
    """The data is not on this machine (and could not be downloaded); says what to put where."""


@dataclass
class DatasetInfo:
    """What is known about a dataset without loading it."""

    class_names: list[str]
    channels: int
    image_size: int
    labeled: bool = True
    # Raw value range: 255.0 for uint8 images, 1.0 for float data in 0-1.
    scale: float = 255.0
    # Samples in each split ("train", "test"), before filters; None when unknown.
    split_sizes: dict[str, int] | None = None
    # "classification" (integer labels), or "regression" (float targets; class_names are
    # then the targets' names, target_0..target_{K-1}).
    task: str = "classification"
    # Read while training (a dataset by URL), never held whole in memory.
    streamed: bool = False

    def samples(self, ref: DatasetRef) -> int | None:
        """How many samples `ref` loads at most (its split, its class and count filters)."""
        if self.split_sizes is None:
            return None
        splits = ("train", "test") if ref.split == "all" else (ref.split,)
        n = sum(self.split_sizes.get(s, 0) for s in splits)
        if ref.samples_per_class is not None:
            k = len(ref.classes) if ref.classes is not None else len(self.class_names)
            n = min(n, ref.samples_per_class * k * len(splits))
        return n

    def memory_bytes(self, ref: DatasetRef) -> int | None:
        """Bytes the loaded tensors take in the worker (uint8, or float32 for 0-1 data)."""
        n = self.samples(ref)
        if n is None or self.streamed:
            return None
        side = ref.image_size or self.image_size
        return n * self.channels * side * side * (1 if self.scale == 255.0 else 4)


# Samples the channel statistics of a streamed set are taken from.
STREAMED_STATS_SAMPLES = 2048


@dataclass
class InMemoryData:
    """A whole split: x [N, C, H, W] (uint8 0-255 or float32 0-1), y [N] or None.

    `x` is a tensor, or for a dataset by URL a `StreamedImages` that reads images when
    indexed (`streamed`); the labels are always in memory.
    """

    x: torch.Tensor | StreamedImages
    y: torch.Tensor | None
    class_names: list[str]
    scale: float
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        """Outputs a model of this data has: classes, or regression targets."""
        return len(self.class_names)

    @property
    def task(self) -> str:
        """ "regression" when the labels are float targets [N, K], else "classification"."""
        if self.y is not None and self.y.is_floating_point():
            return "regression"
        return "classification"

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1])

    @property
    def streamed(self) -> bool:
        return not isinstance(self.x, torch.Tensor)

    def head(self, n: int) -> InMemoryData:
        """The first `n` samples, unlabelled (probes of a network's shapes), in memory."""
        return InMemoryData(self.x[:n], None, self.class_names, self.scale, self.description)

    def unlabelled(self) -> InMemoryData:
        """The same samples without their labels."""
        return InMemoryData(self.x, None, self.class_names, self.scale, self.description)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the 0-1 scale, for the model's normalisation."""
        from app.core.datasets.stored import channel_stats

        if not isinstance(self.x, torch.Tensor):
            return self.x.channel_stats(STREAMED_STATS_SAMPLES)
        return channel_stats(self.x.cpu().numpy())


# load(ref, data_root, download): one split, before filters; `download` lets a source
# fetch missing files where the network allows (torchvision's sets).
Loader = Callable[[DatasetRef, Path, bool], InMemoryData]


@dataclass
class DataSource:
    info: Callable[[DatasetRef], DatasetInfo]
    load: Loader


DATASETS: Registry[DataSource] = Registry("dataset")


def register_dataset(
    name: str, *, info: Callable[[DatasetRef], DatasetInfo]
) -> Callable[[Loader], Loader]:
    """Register `load(ref, data_root, download) -> InMemoryData` under `name`, with its
    `info`."""

    def deco(load: Loader) -> Loader:
        DATASETS.add(name, DataSource(info=info, load=load))
        return load

    return deco


def known_datasets() -> list[str]:
    return DATASETS.names()


# ------------------------------------------------------------------------ shared rules
def holdout_mask(y: np.ndarray | None, n: int) -> np.ndarray:
    """The fixed test split of digits and of every upload: within each class, in stored
    order, every fifth sample (positions 4, 9, 14, ...); without labels (or with
    regression targets), every fifth sample overall."""
    test = np.zeros(n, dtype=bool)
    if y is None:
        test[4::5] = True
        return test
    for c in np.unique(y):
        test[np.flatnonzero(y == c)[4::5]] = True
    return test


def target_names(k: int) -> list[str]:
    """Names of K regression targets, in the places class names take for classes."""
    return [f"target_{i}" for i in range(k)]


def resolve_classes(ref: DatasetRef, class_names: list[str]) -> list[int] | None:
    """`classes` as indices into the dataset's classes; ValueError names a missing one."""
    if ref.classes is None:
        return None
    indices: list[int] = []
    for c in ref.classes:
        if isinstance(c, int):
            if not 0 <= c < len(class_names):
                raise ValueError(f"class {c} is not in the dataset (it has {len(class_names)})")
            indices.append(c)
        else:
            if c not in class_names:
                raise ValueError(f"class {c!r} is not in the dataset ({', '.join(class_names)})")
            indices.append(class_names.index(c))
    if len(set(indices)) != len(indices):
        raise ValueError("classes are repeated")
    return indices


# ------------------------------------------------------------------------ entry points
@dataclass
class UploadedInfo:
    """What the API's database row says about an upload (see app.models.dataset)."""

    class_names: list[str]
    channels: int
    image_size: int
    labeled: bool
    scale: float
    num_samples: int | None = None
    task: str = "classification"
    streamed: bool = False


def dataset_info(ref: DatasetRef, uploaded: UploadedInfo | None = None) -> DatasetInfo:
    """Metadata for the spec check; raises UnknownNameError for an unknown name."""
    if ref.id is not None:
        if uploaded is None:
            raise DatasetUnavailableError(f"no dataset with id {ref.id!r}")
        n = uploaded.num_samples
        return DatasetInfo(
            uploaded.class_names,
            uploaded.channels,
            uploaded.image_size,
            uploaded.labeled,
            uploaded.scale,
            # The holdout split is about a fifth: bound both splits by the whole set.
            split_sizes=None if n is None else {"train": n, "test": n},
            task=uploaded.task,
            streamed=uploaded.streamed,
        )
    return DATASETS.get(ref.name or "").info(ref)


def load_source(ref: DatasetRef, data_root: Path, *, download: bool = True) -> InMemoryData:
    """One split of a registered source, before filters (the worker's `load_dataset`
    applies them); `download=False` never reaches for the network."""
    return DATASETS.get(ref.name or "").load(ref, data_root, download)
