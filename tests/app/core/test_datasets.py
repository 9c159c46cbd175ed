"""The dataset catalog and the stored upload format: names, classes, the holdout split,
channel statistics, and the one writer and reader of an upload's arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.datasets import dataset_info, holdout_mask, known_datasets, resolve_classes
from app.core.datasets.stored import channel_stats, describe, read_dataset, write_dataset
from app.core.registry import UnknownNameError
from app.schemas.stage_spec import DatasetRef


def test_resolve_classes_names_the_missing_class():
    with pytest.raises(ValueError, match="class 12 is not in the dataset"):
        resolve_classes(DatasetRef(name="digits", classes=[1, 12]), [str(i) for i in range(10)])
    with pytest.raises(ValueError, match="'cat'"):
        resolve_classes(DatasetRef(name="digits", classes=["cat"]), ["0", "1"])


def test_unknown_dataset_names_known_ones():
    with pytest.raises(UnknownNameError, match="digits"):
        dataset_info(DatasetRef(name="imagenet"))
    with pytest.raises(UnknownNameError, match="did you mean torchvision:FashionMNIST"):
        dataset_info(DatasetRef(name="torchvision:Fashion"))
    assert "digits" in known_datasets() and "torchvision:CIFAR10" in known_datasets()


def test_uploaded_npz_holdout_split(tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 256, size=(50, 1, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(5), 10)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, class_names=np.array(list("abcde")))
    train, test, every = (read_dataset(path, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (40, 10, 50)
    assert torch.bincount(test.y).tolist() == [2] * 5
    assert every.class_names == list("abcde") and every.scale == 255.0


def test_the_holdout_is_every_fifth_sample_of_each_class():
    y = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1])
    test = holdout_mask(y, len(y))
    # class 0 at 0, 2, 3, 5, 6: its fifth is index 6; class 1 at 1, 4, 7, 8, 9, 10, 11: 9.
    assert np.flatnonzero(test).tolist() == [6, 9]
    assert np.flatnonzero(holdout_mask(None, 10)).tolist() == [4, 9]


def test_written_sets_read_back_exactly(tmp_path: Path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 5)
    rel, size = write_dataset(tmp_path, "abc", x=x, y=y, class_names=["a", "b", "c", "d"])
    assert rel == "datasets/abc.npz" and size == (tmp_path / rel).stat().st_size
    back = read_dataset(tmp_path / rel)
    assert torch.equal(back.x, torch.from_numpy(x)) and back.y.tolist() == y.tolist()
    assert back.class_names == ["a", "b", "c", "d"]
    # Regression targets: float32 [N, K], named target_i; no class names stored.
    targets = rng.random((20, 2))
    rel, _ = write_dataset(tmp_path, "reg", x=x, y=targets, class_names=[])
    back = read_dataset(tmp_path / rel)
    assert back.task == "regression" and back.class_names == ["target_0", "target_1"]
    # Nothing but the final file is left behind.
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["abc.npz", "reg.npz"]


def test_channel_stats_match_a_direct_computation_and_the_loaded_sets():
    x = np.random.default_rng(2).integers(0, 256, size=(3000, 3, 4, 4), dtype=np.uint8)
    mean, std = channel_stats(x)
    flat = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    assert np.allclose(mean, flat.mean(axis=1)) and np.allclose(std, flat.std(axis=1, ddof=1))
    # The worker's normalisation and the stored meta are the same computation.
    meta = describe(x, None, [])
    train = ~holdout_mask(None, len(x))
    assert np.allclose(meta["mean"], channel_stats(x, np.flatnonzero(train))[0], atol=1e-6)
    # A constant channel keeps a usable std.
    assert channel_stats(np.zeros((2, 1, 8, 8), dtype=np.uint8))[1] == [1e-3]
