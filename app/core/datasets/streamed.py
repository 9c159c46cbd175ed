"""Datasets by reference: images at a URL (an image folder, or WebDataset-style tar
shards), read sample by sample while training instead of held in memory.

The API reads a dataset's listing once, when it is registered
(app.services.dataset_urls), and stores it as an index beside the uploads: the files,
for tar shards each sample's byte span inside its shard, the labels, and the channels
and side every image is brought to. Files added to the folder later are not part of the
dataset; the index is what was registered.

The worker opens the index (`read_index`) as an `InMemoryData` whose `x` is a
`StreamedImages`: labels in memory, images read through fsspec when indexed. Images are
decoded exactly as uploads and `/predict` decode them (app.core.images.stored_pixels).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app.core.datasets.catalog import DatasetUnavailableError, InMemoryData, holdout_mask
from app.core.images import MAX_SOURCE_PIXELS, stored_pixels

INDEX_VERSION = 1
FORMATS = ("image_folder", "webdataset")
# What PIL may raise on a damaged or hostile image.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def index_file(dataset_id: str) -> str:
    """Where a dataset by URL keeps its index, relative to the artifact dir."""
    return f"datasets/{dataset_id}.index.json"


def is_index(path: Path) -> bool:
    return path.name.endswith(".index.json")


def open_url(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a dataset URL, opened as this process's
    settings say (STILLHOUSE_S3_ENDPOINT_URL for s3://)."""
    import fsspec

    from app.config import get_settings
    from app.core.artifacts import fsspec_options

    fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, get_settings().s3_endpoint_url))
    return fs, root.rstrip("/")


@dataclass
class Index:
    """What a registered dataset is: written by the API, read by the worker."""

    url: str
    format: str
    channels: int
    side: int
    class_names: list[str]
    # One label per sample, or None for an unlabelled set.
    labels: list[int] | None
    # Files relative to `url`; an image folder's sample i is files[i].
    files: list[str]
    # WebDataset shards: sample i is bytes [offset, offset + size) of files[shard].
    spans: list[tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.spans) if self.spans is not None else len(self.files)

    def write(self, path: Path) -> int:
        """Write the index as JSON; its size in bytes."""
        doc = {"version": INDEX_VERSION, **self.__dict__}
        text = json.dumps(doc, separators=(",", ":"))
        path.write_text(text, encoding="utf-8")
        return len(text.encode())

    @classmethod
    def read(cls, path: Path) -> Index:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.pop("version", None) != INDEX_VERSION:
            raise DatasetUnavailableError(f"{path.name}: not an index this version can read")
        spans = doc.pop("spans", None)
        return cls(**doc, spans=None if spans is None else [tuple(s) for s in spans])


class SampleReader:
    """Opens the dataset's filesystem once per process: DataLoader workers and training
    ranks open their own (an s3fs client does not survive a fork or a pickle)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._fs: tuple[int, Any, str] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index"])  # type: ignore[misc]

    def fs(self) -> tuple[Any, str]:
        if self._fs is not None and self._fs[0] != os.getpid():
            # A forked DataLoader worker: the parent's lock may have been held mid-fork.
            self._fs, self._lock = None, threading.Lock()
        with self._lock:
            if self._fs is None:
                fs, root = open_url(self.index.url)
                self._fs = (os.getpid(), fs, root)
            return self._fs[1], self._fs[2]

    def where(self, i: int) -> tuple[str, int | None, int | None]:
        """(file relative to the URL, start, end) of sample i's image bytes."""
        index = self.index
        if index.spans is None:
            return index.files[i], None, None
        shard, offset, size = index.spans[i]
        return index.files[shard], offset, offset + size

    def sample_bytes(self, samples: list[int]) -> list[tuple[str, bytes]]:
        """(name, image bytes) of each sample. One request per sample, sent concurrently
        on an object store (fsspec's cat_ranges): a batch costs about one round trip."""
        fs, root = self.fs()
        places = [self.where(i) for i in samples]
        try:
            blobs = fs.cat_ranges(
                [f"{root}/{name}" for name, _, _ in places],
                [start for _, start, _ in places],
                [end for _, _, end in places],
                on_error="raise",
            )
        except (OSError, ValueError) as exc:
            raise DatasetUnavailableError(f"{self.index.url}: reading failed ({exc})") from None
        return [
            (name if start is None else f"{name}@{start}", blob)
            for (name, start, _), blob in zip(places, blobs, strict=True)
        ]

    def decode(self, name: str, data: bytes, side: int) -> np.ndarray:
        """One sample's bytes as uint8 [C, side, side]."""
        where = f"{self.index.url.rstrip('/')}/{name}"
        try:
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
                w, h = img.size
                if w * h > MAX_SOURCE_PIXELS:
                    raise ValueError(f"{w}x{h} pixels is more than {MAX_SOURCE_PIXELS}")
                img.load()
                return stored_pixels(img, self.index.channels, side)
        except DECODE_ERRORS as exc:
            raise DatasetUnavailableError(f"{where}: not a readable PNG or JPEG ({exc})") from None


class StreamedImages:
    """The images of a dataset by URL, read when indexed.

    It stands where an in-memory dataset has its `x` tensor, for what the worker does
    with one: `len`, `shape`, `x[rows]` (a uint8 batch), and `select`/`resized` for the
    filters. A DataLoader reads it through `__getitems__`, a batch per call.
    """

    dtype = torch.uint8

    def __init__(self, reader: SampleReader, rows: np.ndarray, side: int) -> None:
        self.reader = reader
        self.rows = rows
        self.side = side

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.reader.index.channels, self.side, self.side))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def select(self, which: torch.Tensor | np.ndarray) -> StreamedImages:
        """The samples `which` picks (a boolean mask or indices), still unread."""
        picks = which.cpu().numpy() if isinstance(which, torch.Tensor) else np.asarray(which)
        return StreamedImages(self.reader, self.rows[picks], self.side)

    def resized(self, side: int) -> StreamedImages:
        """The same samples, read at `side` pixels a side."""
        return StreamedImages(self.reader, self.rows, side)

    def __getitem__(self, which: slice | torch.Tensor | int) -> torch.Tensor:
        if isinstance(which, slice):
            positions: Sequence[int] = range(*which.indices(len(self.rows)))
        elif isinstance(which, int):
            return self.__getitems__([which])[0]
        elif which.dtype == torch.bool:
            positions = torch.nonzero(which).flatten().tolist()
        else:
            positions = which.flatten().tolist()
        return self.__getitems__(list(positions))

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        """Samples at these positions as one uint8 batch [B, C, side, side]."""
        c = self.reader.index.channels
        out = np.empty((len(positions), c, self.side, self.side), dtype=np.uint8)
        blobs = self.reader.sample_bytes([int(self.rows[pos]) for pos in positions])
        for k, (name, data) in enumerate(blobs):
            out[k] = self.reader.decode(name, data, self.side)
        return torch.from_numpy(out)

    def channel_stats(self, limit: int) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the 0-1 scale, from at most `limit` samples spread
        evenly over the set (reading all of a large set for them would be an epoch)."""
        from app.core.datasets.stored import channel_stats

        picks = np.unique(np.linspace(0, len(self) - 1, num=min(limit, len(self))).astype(int))
        return channel_stats(self.__getitems__(picks.tolist()).numpy())


def read_index(path: Path, split: str = "all") -> InMemoryData:
    """A registered dataset by URL as InMemoryData with streamed images; `split` "train"
    or "test" applies the fixed holdout, exactly as for an upload."""
    index = Index.read(path)
    n = len(index)
    labels = None if index.labels is None else np.asarray(index.labels, dtype=np.int64)
    rows = np.arange(n)
    if split != "all":
        test = holdout_mask(labels, n)
        rows = rows[test if split == "test" else ~test]
    x = StreamedImages(SampleReader(index), rows, index.side)
    y = None if labels is None else torch.from_numpy(labels[rows])
    name = path.name.removesuffix(".index.json")
    return InMemoryData(x, y, list(index.class_names), 255.0, f"url/{name}/{split}")
