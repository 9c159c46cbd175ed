"""The stored form of an uploaded dataset: one `.npz` per upload, written by the API after
validation and read by the worker. This module is its only writer and reader.

Layout: `x` [N, C, H, W] (uint8 0-255, or float32 0-1); for classes `y` int64 [N] and
`class_names` (str); for regression targets `y` float32 [N, K] and no names (they are
`target_0..target_{K-1}`); no `y` for an unlabelled set. Read without pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.datasets.catalog import InMemoryData, holdout_mask, target_names
from app.core.files import atomic_write

# Samples per chunk when computing statistics (bounds the float64 copy).
STATS_CHUNK = 1024
# The smallest std kept: a constant channel must not divide by zero in normalisation.
MIN_STD = 1e-3


def dataset_file(dataset_id: str) -> str:
    """Where an upload is stored, relative to the artifact dir."""
    return f"datasets/{dataset_id}.npz"


def write_dataset(
    artifact_dir: Path,
    dataset_id: str,
    *,
    x: np.ndarray,
    y: np.ndarray | None,
    class_names: list[str],
) -> tuple[str, int]:
    """Write the arrays atomically and durably; (path relative to artifact_dir, bytes)."""
    rel_path = dataset_file(dataset_id)
    arrays: dict[str, np.ndarray] = {"x": x}
    if y is not None and y.dtype.kind == "f":
        arrays["y"] = y.astype(np.float32)  # regression targets: no class names
    elif y is not None:
        arrays["y"] = y.astype(np.int64)
        arrays["class_names"] = np.array(class_names, dtype=np.str_)
    final = artifact_dir / rel_path

    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(final, write, durable=True)
    return rel_path, final.stat().st_size


def read_dataset(path: Path, split: str = "all") -> InMemoryData:
    """A stored upload as tensors (a dataset by URL: streamed, app.core.datasets.streamed);
    `split` "train" or "test" applies the fixed holdout."""
    from app.core.datasets.streamed import is_index, read_index

    if is_index(path):
        return read_index(path, split)
    with np.load(path, allow_pickle=False) as npz:
        x_np = npz["x"]
        y_np = npz["y"] if "y" in npz.files else None
        names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else []
    regression = y_np is not None and y_np.dtype.kind == "f"
    if regression:
        assert y_np is not None
        y_np = y_np.astype(np.float32).reshape(len(y_np), -1)
        names = target_names(y_np.shape[1])
    elif y_np is not None:
        y_np = y_np.astype(np.int64)
    if split != "all":
        test = holdout_mask(None if regression else y_np, len(x_np))
        keep = test if split == "test" else ~test
        x_np = x_np[keep]
        y_np = None if y_np is None else y_np[keep]
    x = torch.from_numpy(np.ascontiguousarray(x_np))
    y = None if y_np is None else torch.from_numpy(y_np)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    return InMemoryData(x, y, names, scale, f"upload/{path.stem}/{split}")


def channel_stats(
    x: np.ndarray, indices: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std on the 0-1 scale over `indices` (default: all).

    float64 in chunks: a float32 sum over 10^8 pixels drifts in the 4th digit, and a
    float64 copy of a whole set would not fit where the set itself barely does.
    """
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    count = 0
    n = len(x) if indices is None else len(indices)
    for start in range(0, n, STATS_CHUNK):
        part = slice(start, start + STATS_CHUNK)
        rows = x[part] if indices is None else x[indices[part]]
        chunk = rows.astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / max(count, 1)
    var = np.maximum(squares - count * mean**2, 0.0) / max(count - 1, 1)
    std = np.maximum(np.sqrt(var), MIN_STD)
    return [float(v) for v in mean], [float(v) for v in std]


def describe(x: np.ndarray, y: np.ndarray | None, class_names: list[str]) -> dict[str, Any]:
    """A stored set's metadata (the dataset row's `meta`): the task, class counts or
    target statistics, the fixed holdout's sizes and train-split channel statistics."""
    n = len(x)
    regression = y is not None and y.dtype.kind == "f"
    test = holdout_mask(None if regression else y, n)
    train_idx = np.flatnonzero(~test)
    mean, std = channel_stats(x, train_idx)
    meta: dict[str, Any] = {
        "mean": [round(v, 6) for v in mean],
        "std": [round(v, 6) for v in std],
        "stats_split": "train",
        "split_sizes": {"train": len(train_idx), "test": int(test.sum())},
        "task": "regression" if regression else "classification",
    }
    if regression:
        assert y is not None
        meta["targets"] = int(y.shape[1])
        meta["target_mean"] = [round(float(v), 6) for v in y[~test].mean(axis=0)]
        meta["target_std"] = [round(float(v), 6) for v in y[~test].std(axis=0)]
    elif y is not None:
        counts = np.bincount(y, minlength=len(class_names))
        meta["class_counts"] = {name: int(c) for name, c in zip(class_names, counts, strict=True)}
    return meta
