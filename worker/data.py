"""The worker's datasets: a reference loaded with its filters applied, the index batches
of an epoch, and the images of those batches.

What exists and how each source is read is the shared catalog's (app.core.datasets);
the filters of a reference (`classes`, `samples_per_class`, `image_size`, `labels`)
apply here, the same way to every source. A set in memory is indexed directly; a
dataset by URL (app.core.datasets.streamed) is read by DataLoader worker processes, so
decoding overlaps training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from app.config import usable_cores
from app.core.datasets import DatasetUnavailableError, InMemoryData, load_source, resolve_classes
from app.core.datasets.stored import read_dataset
from app.core.datasets.streamed import StreamedImages
from app.core.images import resize_images
from app.schemas.stage_spec import DatasetRef

log = logging.getLogger(__name__)

# Reader processes of a streamed set at most: past that, decoding small images is no
# longer what a step waits for, and each process holds its own copy of the index.
MAX_READERS = 8
# Images per read while a streamed set is read into memory.
MEMORY_READ_BATCH = 256
# What a dataset's `x` is: a tensor in memory, or images read when indexed.
Images = torch.Tensor | StreamedImages


def load_dataset(
    ref: DatasetRef,
    *,
    data_root: Path,
    seed: int,
    uploaded_path: Path | None = None,
    download: bool = True,
    memory_bytes: int | None = None,
) -> InMemoryData:
    """Load a dataset reference with its filters applied. A dataset by URL whose images
    decode to at most `memory_bytes` is read into memory once (the fast path); a larger
    one, or any with `memory_bytes=None`, is streamed every epoch."""
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
    data = apply_filters(data, ref, seed=seed)
    if memory_bytes is not None and isinstance(data.x, StreamedImages):
        size = math.prod(data.x.shape)
        if size <= memory_bytes:
            data = into_memory(data)
        else:
            log.info("%s: %d bytes decoded; streamed every epoch", data.description, size)
    return data


def into_memory(data: InMemoryData) -> InMemoryData:
    """A streamed set decoded once into memory (by one reader per core: nothing trains
    meanwhile), for the fast path of a set in memory."""
    started = time.perf_counter()
    order = torch.arange(len(data)).split(MEMORY_READ_BATCH)
    parts = list(read_batches(data.x, order, workers=min(MAX_READERS, usable_cores())))
    x = torch.cat(parts) if parts else torch.empty(0, *data.x.shape[1:], dtype=torch.uint8)
    log.info(
        "%s: %d images read into memory in %.1fs",
        data.description,
        len(x),
        time.perf_counter() - started,
    )
    return InMemoryData(x, data.y, data.class_names, data.scale, data.description, data.extra)


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
        x, y = take(x, mask), mapped[mask]
        names = [names[i] for i in keep_classes]
    if ref.samples_per_class is not None and y is not None and labels:
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(len(names)):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)[: ref.samples_per_class]]
            picks.append(idx)
        order = torch.sort(torch.cat(picks)).values
        x, y = take(x, order), y[order]
    if ref.image_size is not None and x.shape[-1] != ref.image_size:
        if isinstance(x, torch.Tensor):
            x = resize_images(x, ref.image_size)
        else:
            x = x.resized(ref.image_size)
    if not ref.labels:
        y = None
    if isinstance(x, torch.Tensor):
        x = x.contiguous()
    return InMemoryData(x, y, names, data.scale, data.description, data.extra)


def take(x: Images, which: torch.Tensor) -> Images:
    """The samples `which` picks (a mask or indices): a copy in memory, or a narrower
    streamed set that is still unread."""
    return x[which] if isinstance(x, torch.Tensor) else x.select(which)


def epoch_batches(
    n: int, batch_size: int, *, gen: torch.Generator, shuffle: bool
) -> list[torch.Tensor]:
    """Index batches for one epoch: `steps_per_epoch(n, batch_size)` of them, every sample
    in one, their sizes as equal as they can be (at most `batch_size`).

    Not `batch_size` each and a remainder last: 50 images at 12 would be four batches of 12
    and one of 2, and a batch of 2 makes batch norm's statistics noise (in a resnet18 on
    8x8 digits the last stages see 1x1 maps: 2 values a channel). That one step an epoch
    cost a fine-tuned teacher 10 points on the few-shot digits target (docs/benchmarks.md,
    "Equal batches"); five batches of 10 take the same steps without it."""
    if n == 0:
        return []
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.tensor_split(steps_per_epoch(n, batch_size)))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def loader_workers() -> int:
    """DataLoader processes reading a streamed set: every core but the one the training
    loop runs on (at least one, at most MAX_READERS)."""
    return max(1, min(MAX_READERS, usable_cores() - 1))


def read_batches(
    x: Images, batches: Sequence[torch.Tensor], *, pin: bool = False, workers: int | None = None
) -> Iterator[torch.Tensor]:
    """The images of each batch of indices, in order (on the CPU, or where the tensor
    lives). A streamed set is read ahead by `workers` (default `loader_workers()`)
    processes."""
    if isinstance(x, torch.Tensor):
        for idx in batches:
            yield x[idx.to(x.device)]
        return
    yield from _loader(x, [idx.tolist() for idx in batches], workers=workers, pin=pin)


def _loader(
    x: StreamedImages,
    batches: Iterable[list[int]],
    *,
    workers: int | None,
    pin: bool,
    persistent: bool = False,
) -> DataLoader[torch.Tensor]:
    """A DataLoader of `workers` (default `loader_workers()`) reader processes over a
    streamed set, a batch of indices at a time."""
    return DataLoader(
        x,  # type: ignore[arg-type]  # map-style: __len__ and __getitems__
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers or loader_workers(),
        collate_fn=_as_is,
        pin_memory=pin,
        # Enough batches in flight that a slow read (object storage) rarely stalls a step.
        prefetch_factor=4,
        persistent_workers=persistent,
    )


class EpochReader:
    """Reads the batches of one fit's epochs. For a streamed set, one DataLoader whose
    reader processes live for the whole fit: each epoch hands them its batches (forking
    and warming them per epoch cost about half a second here)."""

    def __init__(self, x: Images, *, pin: bool = False) -> None:
        self.x = x
        self.pin = pin
        self.plan = _EpochPlan()
        self.loader: DataLoader[torch.Tensor] | None = None

    def epoch(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of these batches of indices, in order."""
        if not batches:
            return iter(())
        if isinstance(self.x, torch.Tensor):
            return read_batches(self.x, batches)
        if self.loader is None:
            self.loader = _loader(self.x, self.plan, workers=None, pin=self.pin, persistent=True)
        self.plan.batches = [idx.tolist() for idx in batches]
        return iter(self.loader)

    def close(self) -> None:
        """End the reader processes (a stopped stage, or the end of the fit)."""
        loader, self.loader = self.loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()


class _EpochPlan:
    """The batch sampler of an EpochReader: the current epoch's batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    """StreamedImages.__getitems__ already returns the batch as one tensor."""
    return batch
