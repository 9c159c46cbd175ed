"""The built-in datasets: scikit-learn's digits, a synthetic generator, and torchvision's
classic image sets read offline from the data root. Each registers itself in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.core.datasets.catalog import (
    DatasetInfo,
    DatasetUnavailableError,
    InMemoryData,
    holdout_mask,
    register_dataset,
)
from app.schemas.stage_spec import DatasetRef


# ----------------------------------------------------------------------------- digits
# scikit-learn's handwritten digits: 1,797 8x8 images, values 0-16. The split is fixed:
# within each class, in load_digits order, every fifth image (positions 4, 9, 14, ...) is
# test, the rest train: 1,442 train and 355 test images.
def _digits_info(_ref: DatasetRef) -> DatasetInfo:
    return DatasetInfo(
        [str(i) for i in range(10)],
        channels=1,
        image_size=8,
        scale=1.0,
        split_sizes={"train": 1442, "test": 355},
    )


@register_dataset("digits", info=_digits_info)
def _load_digits(ref: DatasetRef, _root: Path, _download: bool) -> InMemoryData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    y = digits.target.astype(np.int64)
    # The same rule as an upload's holdout: every fifth image of each class is test.
    test = holdout_mask(y, len(y))
    keep = test if ref.split == "test" else ~test
    # 0-16 intensities to 0-1, so that predictions take the usual float-image scale.
    x = torch.from_numpy((digits.images[keep] / 16.0).astype(np.float32)).unsqueeze(1)
    return InMemoryData(
        x, torch.from_numpy(y[keep]), _digits_info(ref).class_names, 1.0, f"digits/{ref.split}"
    )


# -------------------------------------------------------------------------- synthetic
SYNTHETIC_DEFAULTS = {
    "num_classes": 10,
    "channels": 3,
    "image_size": 32,
    "train": 5000,
    "test": 1000,
}


def _synthetic_info(ref: DatasetRef) -> DatasetInfo:
    n = ref.num_classes or SYNTHETIC_DEFAULTS["num_classes"]
    samples = {s: ref.num_samples or SYNTHETIC_DEFAULTS[s] for s in ("train", "test")}
    return DatasetInfo(
        [f"class_{i}" for i in range(n)],
        channels=ref.channels or SYNTHETIC_DEFAULTS["channels"],
        image_size=ref.image_size or SYNTHETIC_DEFAULTS["image_size"],
        scale=255.0,
        split_sizes=samples,
    )


@register_dataset("synthetic", info=_synthetic_info)
def _load_synthetic(ref: DatasetRef, _root: Path, _download: bool) -> InMemoryData:
    """Procedural images: per class a smooth random pattern, per sample a shift and noise.

    Deterministic by (`seed`, split). Classes are separable but not trivially (each
    sample mixes in a little of a random other class), so accuracy means something.
    """
    info = _synthetic_info(ref)
    n_classes, c, size = len(info.class_names), info.channels, info.image_size
    n = ref.num_samples or SYNTHETIC_DEFAULTS[ref.split]
    seed = ref.seed or 0
    proto_gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n_classes, c, 4, 4, generator=proto_gen)
    protos = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    # Test samples come from the same class patterns, with their own noise.
    gen = torch.Generator().manual_seed(seed * 2 + (1 if ref.split == "test" else 0) + 1)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    other = torch.randint(0, n_classes, (n,), generator=gen)
    x = torch.empty(n, c, size, size, dtype=torch.uint8)
    grid = torch.arange(size)
    chunk = 2048  # bounded memory for millions of samples
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        k = sl.stop - sl.start
        img = 0.75 * protos[y[sl]] + 0.25 * protos[other[sl]]
        # A random cyclic shift of up to 2 pixels per sample, by gathering shifted indices.
        dy, dx = torch.randint(-2, 3, (2, k), generator=gen)
        rows = (grid[None, :] - dy[:, None]) % size
        cols = (grid[None, :] - dx[:, None]) % size
        batch = torch.arange(k)[:, None, None]
        img = img.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        img = img + 0.12 * torch.randn(k, c, size, size, generator=gen)
        x[sl] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return InMemoryData(x, y, info.class_names, 255.0, f"synthetic/{ref.split}")


# ------------------------------------------------------------------------ torchvision
@dataclass(frozen=True)
class TorchvisionSet:
    channels: int
    image_size: int
    train: int  # samples in the train split
    test: int
    # Class names, as the worker labels them (the API checks `classes` against these).
    class_names: tuple[str, ...]
    # Files torchvision reads, relative to the data root (for the error message).
    files: tuple[str, ...]


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _mnist_like(name: str, class_names: tuple[str, ...]) -> TorchvisionSet:
    files = tuple(f"{name}/raw/{f}" for f in _MNIST_FILES)
    return TorchvisionSet(1, 28, 60000, 10000, class_names, files)


_DIGITS = tuple(str(i) for i in range(10))
TORCHVISION_SETS = {
    "MNIST": _mnist_like("MNIST", _DIGITS),
    "FashionMNIST": _mnist_like(
        "FashionMNIST",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    # Kuzushiji-MNIST's classes by their romanised names, as torchvision has them.
    "KMNIST": _mnist_like("KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "CIFAR10": TorchvisionSet(
        3,
        32,
        50000,
        10000,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("cifar-10-batches-py/data_batch_1..5", "cifar-10-batches-py/test_batch"),
    ),
    # CIFAR-100's names live only in its data files: classes by index ("0".."99").
    "CIFAR100": TorchvisionSet(
        3,
        32,
        50000,
        10000,
        tuple(str(i) for i in range(100)),
        ("cifar-100-python/train", "cifar-100-python/test"),
    ),
    "SVHN": TorchvisionSet(
        3, 32, 73257, 26032, _DIGITS, ("SVHN/train_32x32.mat", "SVHN/test_32x32.mat")
    ),
}


def _torchvision_set(name: str) -> tuple[str, TorchvisionSet]:
    short = name.removeprefix("torchvision:")
    return short, TORCHVISION_SETS[short]


def _torchvision_info(ref: DatasetRef) -> DatasetInfo:
    _short, tv = _torchvision_set(ref.name or "")
    return DatasetInfo(
        list(tv.class_names),
        channels=tv.channels,
        image_size=tv.image_size,
        scale=255.0,
        split_sizes={"train": tv.train, "test": tv.test},
    )


def _load_torchvision(ref: DatasetRef, root: Path, download: bool) -> InMemoryData:
    """A torchvision set read from the data root (downloaded there where the network allows)."""
    import torchvision.datasets as tvd

    short, tv = _torchvision_set(ref.name or "")
    train = ref.split == "train"
    try:
        if short == "SVHN":
            ds = tvd.SVHN(str(root / "SVHN"), split=ref.split, download=download)
            x = torch.from_numpy(np.asarray(ds.data))
            y = torch.as_tensor(ds.labels, dtype=torch.int64)
        else:
            ds = getattr(tvd, short)(str(root), train=train, download=download)
            data = ds.data
            x = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
            # MNIST-like sets come as [N, H, W]; CIFAR as [N, H, W, C].
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            y = torch.as_tensor(ds.targets, dtype=torch.int64)
    except (RuntimeError, OSError) as exc:
        expected = ", ".join(str(root / f) for f in tv.files)
        raise DatasetUnavailableError(
            f"torchvision:{short} is not on this machine and could not be downloaded ({exc}). "
            f"Place these files (un-gzipped) under the data root "
            f"(STILLHOUSE_DATA_ROOT={root}): {expected}"
        ) from exc
    # The same names the API checked `classes` against (torchvision's own differ: MNIST
    # says "0 - zero").
    names = _torchvision_info(ref).class_names
    return InMemoryData(x.contiguous(), y, names, 255.0, f"torchvision:{short}/{ref.split}")


for _short in TORCHVISION_SETS:
    register_dataset(f"torchvision:{_short}", info=_torchvision_info)(_load_torchvision)
