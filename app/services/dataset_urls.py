"""Datasets by reference (POST /api/v1/datasets with a JSON body): an image folder or
WebDataset tar shards at a URL, registered without being loaded.

Registration reads the listing once: the files (and inside tar shards, each member's
byte span), the classes and labels, and a few hundred evenly spread images for the
channels, the side and the channel statistics. That index is stored like an upload's file
(app.core.datasets.streamed); training reads the images from the URL. Anything that
stops the URL being read answers 422 naming `url`, and nothing is recorded.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from app.core.datasets import DatasetUnavailableError, holdout_mask
from app.core.datasets.stored import channel_stats
from app.core.datasets.streamed import (
    DECODE_ERRORS,
    Index,
    SampleReader,
    index_file,
    open_url,
)
from app.core.files import atomic_write
from app.core.images import is_grey
from app.models import Dataset
from app.models.base import new_id, utcnow
from app.schemas.dataset import DatasetByURL
from app.services import owned
from app.services.errors import invalid
from app.services.upload_rules import (
    IGNORED_FILES,
    IMAGE_SUFFIXES,
    MAX_CLASS_NAME_CHARS,
    MAX_CLASSES,
    check_stored_side,
)

log = logging.getLogger(__name__)

# Samples a registered set may have (the index keeps one entry each, in memory).
MAX_SAMPLES = 2_000_000
# Images decoded at registration for the channels, the side and the statistics.
PEEK_SAMPLES = 256
# A WebDataset sample's label member, and the class names file beside the shards.
LABEL_SUFFIX = "cls"
CLASSES_FILE = "classes.txt"


def _fault(message: str) -> Exception:
    return invalid("url", message)


def check_allowed(url: str, roots: list[str]) -> str:
    """`url` normalised, if it lies under one of the operator's roots; else 422."""
    if not url.startswith(("file://", "s3://")):
        raise _fault(f"{url!r}: expected file:///path or s3://bucket/prefix")
    if not roots:
        raise _fault(
            "datasets by URL are off on this service: its operator lists the places they "
            "may come from in STILLHOUSE_DATASET_URL_ROOTS"
        )
    normal = _normal(url)
    for root in roots:
        if root.startswith(("file://", "s3://")) and (
            normal == _normal(root) or normal.startswith(_normal(root).rstrip("/") + "/")
        ):
            return normal
    raise _fault(f"{normal} is not under any of STILLHOUSE_DATASET_URL_ROOTS ({', '.join(roots)})")


def _normal(url: str) -> str:
    """No way out of a root through '..', doubled slashes or (on disk) a symlink."""
    scheme, rest = url.split("://", 1)
    path = posixpath.normpath("/" + rest).lstrip("/") if scheme == "s3" else os.path.realpath(rest)
    return f"{scheme}://{path}"


def register_dataset(
    session: Session, *, owner: str, body: DatasetByURL, artifact_dir: Path, roots: list[str]
) -> Dataset:
    """Read the URL's index, check it, store the index and record the dataset."""
    url = check_allowed(body.url, roots)
    index, (mean, std) = scan(url, body.format, body.image_size)
    labels = None if index.labels is None else np.asarray(index.labels, dtype=np.int64)
    test = holdout_mask(labels, len(index))
    meta: dict[str, Any] = {
        "mean": [round(v, 6) for v in mean],
        "std": [round(v, 6) for v in std],
        "stats_split": "train",
        "stats_samples": min(PEEK_SAMPLES, int((~test).sum())),
        "split_sizes": {"train": int((~test).sum()), "test": int(test.sum())},
        "task": "classification",
        "url": url,
        "source": {"url": url, "format": body.format, "files": len(index.files)},
    }
    if labels is not None:
        counts = np.bincount(labels, minlength=len(index.class_names))
        meta["class_counts"] = {n: int(c) for n, c in zip(index.class_names, counts, strict=True)}
    dataset_id = new_id()
    rel_path = index_file(dataset_id)
    size = 0

    def write(path: Path) -> None:
        nonlocal size
        size = index.write(path)

    atomic_write(artifact_dir / rel_path, write, durable=True)
    row = Dataset(
        id=dataset_id,
        owner=owner,
        name=body.name or posixpath.basename(url.rstrip("/")) or url,
        format=body.format,
        num_samples=len(index),
        classes=list(index.class_names),
        labeled=labels is not None,
        shape=[index.channels, index.side, index.side],
        dtype="uint8",
        meta=meta,
        size_bytes=size,
        path=rel_path,
        created_at=utcnow(),
    )
    owned.record_with_files(session, row, files=artifact_dir / rel_path)
    log.info(
        "dataset %s registered from %s (%d samples) for %s", dataset_id, url, len(index), owner
    )
    return row


def scan(
    url: str, fmt: str, image_size: int | None
) -> tuple[Index, tuple[list[float], list[float]]]:
    """The index of the images at `url` laid out as `fmt`, and the train split's channel
    mean and std from the images peeked at; 422 naming `url` for anything unreadable."""
    try:
        fs, root = open_url(url)
        present = fs.exists(root)
    except ImportError as exc:
        raise _fault(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise _fault(f"{url} cannot be read ({exc})") from None
    if not present:
        raise _fault(f"nothing at {url}")
    try:
        index = (
            _image_folder(fs, root, url) if fmt == "image_folder" else _webdataset(fs, root, url)
        )
    except (OSError, tarfile.TarError) as exc:
        raise _fault(f"{url} cannot be read ({exc})") from None
    if len(index) > MAX_SAMPLES:
        raise _fault(f"{len(index)} samples; at most {MAX_SAMPLES} are accepted")
    try:
        return index, _peek(index, image_size)
    except DatasetUnavailableError as exc:  # the sampled images' bytes, or their pixels
        raise _fault(str(exc)) from None


def _checked_classes(names: list[str]) -> None:
    if len(names) > MAX_CLASSES:
        raise _fault(f"{len(names)} classes; at most {MAX_CLASSES} are accepted")
    for name in names:
        if len(name) > MAX_CLASS_NAME_CHARS or not name.isprintable():
            raise _fault(
                f"{name[:40]!r}: not a usable class name (printable, at most "
                f"{MAX_CLASS_NAME_CHARS} characters)"
            )


def _image_folder(fs: Any, root: str, url: str) -> Index:
    """`class/.../image.png` under the root: classes are the first-level folders, sorted."""
    if not fs.isdir(root):
        raise _fault(f"{url} is a file; an image folder is a folder of class folders")
    found: list[tuple[str, str]] = []
    for path in sorted(fs.find(root)):
        rel = path[len(root) :].lstrip("/")
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts) or parts[-1].lower() in IGNORED_FILES:
            continue
        if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            continue  # a README or labels.csv beside the images
        if len(parts) < 2:
            raise _fault(f"{url}/{rel}: images must be inside a class folder (class/image.png)")
        found.append((parts[0], rel))
    if not found:
        raise _fault(f"{url} holds no PNG or JPEG images in class folders")
    names = sorted({c for c, _ in found})
    _checked_classes(names)
    label = {n: i for i, n in enumerate(names)}
    # Ordered by class, then path: the holdout takes every fifth image of each class.
    found.sort(key=lambda item: (label[item[0]], item[1]))
    return Index(
        url=url,
        format="image_folder",
        channels=0,
        side=0,
        class_names=names,
        labels=[label[c] for c, _ in found],
        files=[rel for _, rel in found],
    )


def _webdataset(fs: Any, root: str, url: str) -> Index:
    """Uncompressed tar shards of `key.png` (or .jpg) with an optional `key.cls` holding
    the class index; class names from a classes.txt beside the shards."""
    if fs.isdir(root):
        base, base_url = root, url.rstrip("/")
        shards = sorted(p[len(root) :].lstrip("/") for p in fs.find(root) if p.endswith(".tar"))
    else:
        # One shard named by itself: the index keeps its folder and its name.
        base, name = root.rsplit("/", 1)
        base_url = url.rsplit("/", 1)[0]
        shards = [name]
    if not shards:
        raise _fault(f"{url} holds no .tar shards (compressed shards cannot be read by offset)")
    spans: list[tuple[int, int, int]] = []
    labels: list[int | None] = []
    for s, shard in enumerate(shards):
        where = f"{base_url}/{shard}"
        with fs.open(f"{base}/{shard}", "rb") as fh:
            for offset, size, label in _shard_samples(fh, where):
                spans.append((s, offset, size))
                labels.append(label)
    if any(label is None for label in labels) and any(label is not None for label in labels):
        raise _fault("some samples have a .cls label and some do not")
    unlabelled = labels[0] is None
    names: list[str] = []
    if not unlabelled:
        top = max(int(v) for v in labels if v is not None)
        names = _class_names(fs, base, top + 1)
    # Ordered by label, then by place: the holdout takes every fifth sample of each class.
    order = sorted(range(len(spans)), key=lambda i: (labels[i] or 0, spans[i]))
    return Index(
        url=base_url,
        format="webdataset",
        channels=0,
        side=0,
        class_names=names,
        labels=None if unlabelled else [int(labels[i] or 0) for i in order],
        files=shards,
        spans=[spans[i] for i in order],
    )


def _shard_samples(fh: Any, where: str) -> list[tuple[int, int, int | None]]:
    """(offset, size, label) of each sample's image in one shard, in the shard's order.
    Members are grouped by key: the path up to the first dot of the file name."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    out: list[tuple[int, int, int | None]] = []
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                head, base_name = posixpath.split(member.name)
                key, _, ext = base_name.partition(".")
                samples.setdefault(posixpath.join(head, key), {})[ext.lower()] = member
            for key, members in samples.items():
                image = next((members[e] for e in ("png", "jpg", "jpeg") if e in members), None)
                if image is None:
                    raise _fault(f"{where}: sample {key!r} has no .png, .jpg or .jpeg")
                label = _label(tf, members.get(LABEL_SUFFIX), f"{where}: {key}.cls")
                out.append((image.offset_data, image.size, label))
    except tarfile.ReadError as exc:
        raise _fault(f"{where}: not an uncompressed tar ({exc})") from None
    return out


def _label(tf: tarfile.TarFile, member: tarfile.TarInfo | None, where: str) -> int | None:
    if member is None:
        return None
    fh = tf.extractfile(member)
    text = fh.read(64).decode("utf-8", "replace").strip() if fh is not None else ""
    if not text.isdigit():
        raise _fault(f"{where}: expected a class index, got {text[:20]!r}")
    return int(text)


def _class_names(fs: Any, base: str, count: int) -> list[str]:
    """Names from classes.txt (one per line) beside the shards, or "0".."K-1"."""
    path = f"{base}/{CLASSES_FILE}"
    if not fs.exists(path):
        return [str(i) for i in range(count)]
    names = [n.strip() for n in fs.cat_file(path).decode("utf-8", "replace").splitlines()]
    names = [n for n in names if n]
    if len(names) < count:
        raise _fault(f"{CLASSES_FILE} names {len(names)} classes, but a .cls says {count - 1}")
    if len(set(names)) != len(names):
        raise _fault(f"{CLASSES_FILE} repeats a class name")
    _checked_classes(names)
    return names


def _peek(index: Index, image_size: int | None) -> tuple[list[float], list[float]]:
    """Decode up to PEEK_SAMPLES images spread over the train split: they decide the
    channels (grey when all are grey) and the side (`image_size`, or the one square size
    they share), and give the channel statistics. Sets index.channels and index.side."""
    reader = SampleReader(index)
    labels = None if index.labels is None else np.asarray(index.labels)
    train = np.flatnonzero(~holdout_mask(labels, len(index)))
    if len(train) == 0:
        train = np.arange(len(index))
    picks = train[np.unique(np.linspace(0, len(train) - 1, PEEK_SAMPLES).astype(int))]
    modes, sizes = [], Counter()
    first: dict[tuple[int, int], str] = {}
    blobs = reader.sample_bytes([int(i) for i in picks])
    for name, data in blobs:
        try:
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
                modes.append(img.mode)
                sizes[img.size] += 1
                first.setdefault(img.size, name)
        except DECODE_ERRORS as exc:
            raise _fault(
                f"{index.url.rstrip('/')}/{name}: not a readable PNG or JPEG ({exc})"
            ) from None
    index.channels = 1 if all(is_grey(m) for m in modes) else 3
    if image_size is not None:
        index.side = image_size
    elif len(sizes) > 1:
        (a, _), (b, _) = sizes.most_common(2)
        raise _fault(
            f"images differ in size ({first[a]} is {a[0]}x{a[1]}, {first[b]} is "
            f"{b[0]}x{b[1]}); send image_size to read them all at one size"
        )
    else:
        ((w, h),) = sizes
        index.side = check_stored_side(first[(w, h)], w, h, "width x height", field="url")
    # The same bytes, decoded as training decodes them: no second read of the samples.
    x = np.stack([reader.decode(name, data, index.side) for name, data in blobs])
    return channel_stats(x)
