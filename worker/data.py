"""The dataset registry: every dataset is held in memory as one tensor and batched by index.

`@register_dataset("name")` adds a source; `torchvision:<Name>` covers torchvision's
classic image sets read from the data root; `{"id": ...}` reads an upload. The filters
of a dataset reference (`classes`, `samples_per_class`, `image_size`, `labels`) apply the
same way to every source. `dataset_info` answers what the API's spec check needs without
loading any data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.schemas.job_spec import DatasetRef
from worker.nets import UnknownNameError

log = logging.getLogger(__name__)


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
        if n is None:
            return None
        side = ref.image_size or self.image_size
        return n * self.channels * side * side * (1 if self.scale == 255.0 else 4)


@dataclass
class InMemoryData:
    """A whole split as tensors: x [N, C, H, W] (uint8 0-255 or float32 0-1), y [N] or None."""

    x: torch.Tensor
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

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the 0-1 scale, for the model's normalisation."""
        # float64 accumulation: a float32 sum over 10^8 pixels drifts in the 4th digit.
        x = self.x.to(torch.float64) / self.scale
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


@dataclass
class DataSource:
    info: Callable[[DatasetRef], DatasetInfo]
    load: Callable[[DatasetRef, Path], InMemoryData]


_SOURCES: dict[str, DataSource] = {}


def register_dataset(
    name: str, *, info: Callable[[DatasetRef], DatasetInfo]
) -> Callable[[Callable[[DatasetRef, Path], InMemoryData]], Callable[..., InMemoryData]]:
    def deco(load: Callable[[DatasetRef, Path], InMemoryData]) -> Callable[..., InMemoryData]:
        _SOURCES[name] = DataSource(info=info, load=load)
        return load

    return deco


def known_datasets() -> list[str]:
    return sorted([*_SOURCES, *(f"torchvision:{n}" for n in TORCHVISION_SETS)])


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
def _load_digits(ref: DatasetRef, _root: Path) -> InMemoryData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    y = digits.target.astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[4::5]] = True
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
def _load_synthetic(ref: DatasetRef, _root: Path) -> InMemoryData:
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
    if short not in TORCHVISION_SETS:
        raise UnknownNameError(
            f"unknown torchvision dataset {short!r}; known: {', '.join(sorted(TORCHVISION_SETS))}"
        )
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


def _load_torchvision(ref: DatasetRef, root: Path, *, download: bool) -> InMemoryData:
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


# ---------------------------------------------------------------------------- uploads
def target_names(k: int) -> list[str]:
    """Names of K regression targets, in the places class names take for classes."""
    return [f"target_{i}" for i in range(k)]


def holdout_mask(y: np.ndarray | None, n: int) -> np.ndarray:
    """The fixed test split of an upload: every fifth sample of each class (or overall)."""
    test = np.zeros(n, dtype=bool)
    if y is None:
        test[4::5] = True
        return test
    for c in np.unique(y):
        test[np.flatnonzero(y == c)[4::5]] = True
    return test


def load_uploaded(path: Path, split: str = "all") -> InMemoryData:
    """An upload as validated and stored by the API: x [N, C, H, W], optional y, class names."""
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


# ------------------------------------------------------------------------ entry points
@dataclass
class UploadedInfo:
    """What the API's database row says about an upload (see app.models.dataset)."""

    class_names: list[str]
    channels: int
    image_size: int
    labeled: bool
    scale: float
    path: Path
    num_samples: int | None = None
    task: str = "classification"


def dataset_info(ref: DatasetRef, uploaded: UploadedInfo | None = None) -> DatasetInfo:
    """Metadata for the spec check; raises UnknownNameError for an unknown name."""
    if ref.id is not None:
        if uploaded is None:
            raise UnknownNameError(f"no dataset with id {ref.id!r}")
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
        )
    name = ref.name or ""
    if name.startswith("torchvision:"):
        return _torchvision_info(ref)
    if name not in _SOURCES:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    return _SOURCES[name].info(ref)


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
        data = load_uploaded(uploaded_path, ref.split)
    elif ref.split == "all":
        parts = [
            _load_source(ref.model_copy(update={"split": split}), data_root, download)
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
        data = _load_source(ref, data_root, download)
    return apply_filters(data, ref, seed=seed)


def _load_source(ref: DatasetRef, data_root: Path, download: bool) -> InMemoryData:
    if (ref.name or "").startswith("torchvision:"):
        return _load_torchvision(ref, data_root, download=download)
    if ref.name not in _SOURCES:
        raise UnknownNameError(
            f"unknown dataset {ref.name!r}; known: {', '.join(known_datasets())}"
        )
    return _SOURCES[ref.name].load(ref, data_root)


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
        x = resize(x, ref.image_size)
    if not ref.labels:
        y = None
    return InMemoryData(x.contiguous(), y, names, data.scale, data.description, data.extra)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of images, keeping uint8 as uint8 (antialiased when shrinking)."""
    out = []
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].float()
        chunk = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(chunk.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else chunk)
    return torch.cat(out)


def epoch_batches(
    n: int, batch_size: int, *, gen: torch.Generator, shuffle: bool
) -> list[torch.Tensor]:
    """Index batches for one epoch; the last partial batch is kept (small few-shot sets)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
