"""Loading datasets in the worker: digits' fixed split, filters, synthetic data,
torchvision offline."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from app.core.datasets import DatasetUnavailableError, dataset_info
from app.schemas.stage_spec import DatasetRef
from worker.data import load_dataset

FASHION_DEB = Path("/usr/share/datasets/fashion-mnist")


def load(ref: DatasetRef, root: Path = Path("/nonexistent"), seed: int = 0, **kw):
    return load_dataset(ref, data_root=root, seed=seed, **kw)


def test_digits_split_is_fixed_and_disjoint():
    train = load(DatasetRef(name="digits"))
    test = load(DatasetRef(name="digits", split="test"))
    both = load(DatasetRef(name="digits", split="all"))
    assert (len(train), len(test), len(both)) == (1442, 355, 1797)
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    # No test image is also a train image.
    train_rows = {tuple(r) for r in train.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in test.x.flatten(1).tolist())
    assert overlap <= 5  # a handful of digits are pixel-identical duplicates in the source
    assert train.class_names == [str(i) for i in range(10)]


def test_classes_filter_relabels_in_given_order():
    data = load(DatasetRef(name="digits", classes=[7, 2]))
    assert data.class_names == ["7", "2"]
    assert set(data.y.tolist()) == {0, 1}
    full = load(DatasetRef(name="digits"))
    assert int((data.y == 0).sum()) == int((full.y == 7).sum())


def test_samples_per_class_is_seeded():
    ref = DatasetRef(name="digits", classes=[5, 6, 7, 8, 9], samples_per_class=10)
    a, b, c = load(ref, seed=0), load(ref, seed=0), load(ref, seed=1)
    assert len(a) == 50 and torch.bincount(a.y).tolist() == [10] * 5
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_image_size_and_unlabelled():
    data = load(DatasetRef(name="digits", image_size=16, labels=False))
    assert data.x.shape[1:] == (1, 16, 16)
    assert data.y is None


def test_synthetic_is_deterministic_by_seed():
    ref = DatasetRef(name="synthetic", num_classes=4, channels=1, image_size=16, num_samples=200)
    a, b = load(ref), load(ref)
    assert a.x.shape == (200, 1, 16, 16) and a.x.dtype == torch.uint8
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load(ref.model_copy(update={"seed": 3}))
    assert not torch.equal(a.x, other.x)
    test = load(ref.model_copy(update={"split": "test"}))
    assert not torch.equal(a.x[:50], test.x[:50])
    assert dataset_info(ref).class_names == [f"class_{i}" for i in range(4)]


def test_missing_torchvision_files_name_what_to_place_where(tmp_path: Path):
    with pytest.raises(DatasetUnavailableError) as exc:
        load(DatasetRef(name="torchvision:FashionMNIST"), root=tmp_path, download=False)
    message = str(exc.value)
    assert str(tmp_path / "FashionMNIST/raw/train-images-idx3-ubyte") in message
    assert "STILLHOUSE_DATA_ROOT" in message


def install_fashion_mnist(root: Path) -> None:
    """Un-gzip Debian's Fashion-MNIST files into torchvision's raw folder."""
    if not FASHION_DEB.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_DEB} is missing (.ci/run installs dataset-fashion-mnist)")
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_DEB.glob("*.gz"):
        target = raw / gz.name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def test_fashion_mnist_reads_offline_from_real_files(tmp_path: Path):
    install_fashion_mnist(tmp_path)
    train = load(DatasetRef(name="torchvision:FashionMNIST"), root=tmp_path, download=False)
    test = load(
        DatasetRef(name="torchvision:FashionMNIST", split="test"), root=tmp_path, download=False
    )
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert len(test) == 10000
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.scale == 255.0
