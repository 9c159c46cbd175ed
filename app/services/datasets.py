"""Uploaded datasets: validated on upload, stored as one .npz each, listed and deleted.

Everything a training job could trip over is checked here, once, when the data arrives
(shapes, dtypes, value ranges, label ranges, readable images), so that a job never fails
an hour in because of the data. Two kinds of upload are read:

- an `.npz` with `x`, optional `y` and optional `class_names` (read without pickle);
- a zip of an image-folder tree, `class/image.png`, optionally under one root folder.

Both are stored the same way, as `<artifact_dir>/datasets/<id>.npz` with `x` [N, C, H, W]
(uint8 0-255, or float32 0-1), `y` int64 and `class_names`, which is exactly what
`worker.data.load_uploaded` reads. docs/datasets.md is the user's description of the rules.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.errors import ProblemError, field_error, invalid
from app.models import FINISHED_STATES, Dataset, Job
from app.models.base import new_id, utcnow
from app.schemas.dataset import DatasetForm, DatasetOut
from app.services import owned
from app.services.upload_io import (
    FILE_FIELD,
    ReceivedUpload,
    display_name,
    has_control_chars,
    parse_form,
)
from worker.data import holdout_mask, resize, target_names

log = logging.getLogger(__name__)

FORMAT_NPZ = "npz"
FORMAT_IMAGE_FOLDER = "image_folder"

# Stored images are square, MIN_SIDE to MAX_SIDE pixels a side: every architecture takes
# 8x8 upwards, and the worker, the model's input shape and serving all use one side length.
MIN_SIDE = 8
MAX_SIDE = 512
# With `image_size`, sources are resized; this bounds a single source image (pixels).
MAX_SOURCE_PIXELS = 4096 * 4096
# The decoded arrays may be at most this many times STILLHOUSE_MAX_UPLOAD_BYTES: the guard
# against zip bombs and compressed npz members that expand without bound.
EXPANSION_FACTOR = 4
# Entries in an uploaded zip, checked before the zip's directory is parsed (zipfile holds
# one object per entry in memory).
MAX_ZIP_ENTRIES = 200_000
MAX_CLASSES = 10_000
MAX_CLASS_NAME_CHARS = 200
NPZ_KEYS = ("x", "y", "class_names")
# Regression targets per sample, at most (a float y of shape [N, K]).
MAX_TARGETS = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Files that operating systems drop into folders by themselves.
IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini"})
# Channels of a grey image; everything else is converted to RGB.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# Samples per chunk when computing statistics (bounds the float64 copy).
STATS_CHUNK = 1024

# What a damaged archive or array stream can raise while being read.
_READ_ERRORS = (
    ValueError,
    EOFError,
    OSError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    struct.error,
    # numpy parses .npy headers as Python literals; PIL's plugins raise SyntaxError too.
    SyntaxError,
    tokenize.TokenError,
    Image.DecompressionBombError,
)


def reject(message: str) -> NoReturn:
    """422 for the uploaded file; the message starts with the key or path at fault."""
    raise invalid([field_error(FILE_FIELD, message)])


def too_much(what: str, size: int, limit: int) -> ProblemError:
    """413 for an upload that is small on the wire but expands past the bound."""
    return ProblemError(
        413,
        f"{what} {size} bytes, more than the {limit} accepted "
        f"({EXPANSION_FACTOR} x STILLHOUSE_MAX_UPLOAD_BYTES)",
        type_="too-large",
        errors=[field_error(FILE_FIELD, f"{what} {size} bytes, more than {limit}")],
    )


@dataclass
class ValidatedData:
    """An upload after validation, in the stored form."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str]
    format: str
    source: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- reading
def read_upload(
    path: Path, *, filename: str | None, image_size: int | None, max_decoded_bytes: int
) -> ValidatedData:
    """Validate an uploaded file and return its arrays; raises 422 (or 413) naming the fault."""
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x93NUMPY"):
        reject("this is a single .npy array; send an .npz instead: np.savez(f, x=x, y=y)")
    entries = _zip_entry_count(path)
    if entries is None:
        reject("not a zip or .npz archive (send an .npz with x, or a zip of class folders)")
    if entries > MAX_ZIP_ENTRIES:
        reject(f"the zip has {entries} entries; at most {MAX_ZIP_ENTRIES} are accepted")
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        reject(f"not a readable zip or .npz archive ({exc})")
    with zf:
        if any(not i.filename for i in zf.infolist()):
            # ZipInfo.is_dir() below would fail on it with an IndexError.
            reject("the zip has an entry with an empty name")
        infos = [i for i in zf.infolist() if not i.is_dir()]
        declared = sum(i.file_size for i in infos)
        if declared > max_decoded_bytes:
            raise too_much("the archive expands to", declared, max_decoded_bytes)
        for info in infos:
            if info.flag_bits & 0x1:
                reject(f"{info.filename}: encrypted zip entries are not accepted")
        looks_npz = bool(infos) and all(i.filename.endswith(".npy") for i in infos)
        if looks_npz or (filename or "").lower().endswith(".npz"):
            return _read_npz(zf, infos, image_size=image_size, max_decoded_bytes=max_decoded_bytes)
        return _read_image_folder(
            zf, infos, image_size=image_size, max_decoded_bytes=max_decoded_bytes
        )


def _zip_entry_count(path: Path) -> int | None:
    """Entries in the zip's end-of-central-directory record; None if there is none."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        # The record is 22 bytes plus a comment of at most 65535 bytes, at the very end.
        start = max(0, size - (22 + 65535))
        fh.seek(start)
        tail = fh.read()
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or len(tail) - pos < 22:
            return None
        total = struct.unpack("<H", tail[pos + 10 : pos + 12])[0]
        if total != 0xFFFF:
            return int(total)
        # Zip64: the real count is in the zip64 record that a locator right before points to.
        end_record = start + pos
        if end_record < 20:
            return int(total)
        fh.seek(end_record - 20)
        locator = fh.read(20)
        if locator[:4] != b"PK\x06\x07":
            return int(total)
        fh.seek(struct.unpack("<Q", locator[8:16])[0])
        record = fh.read(56)
        if record[:4] != b"PK\x06\x06" or len(record) < 40:
            return None
        return int(struct.unpack("<Q", record[32:40])[0])


# ----------------------------------------------------------------------------- npz
def _npy_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                reject(f"{key}: .npy format version {version} is not accepted; save plain arrays")
    except _READ_ERRORS as exc:
        reject(f"{key}: not a readable .npy array ({exc})")
    return tuple(int(d) for d in shape), dtype


def _dtype_problem(key: str, dtype: np.dtype[Any], wanted: str) -> str:
    if dtype.kind == "O":
        return (
            f"{key}: object arrays are not accepted (reading them would need pickle); "
            f"save {wanted} instead"
        )
    return f"{key}: dtype {dtype} is not accepted; {wanted}"


def _read_npz(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    *,
    image_size: int | None,
    max_decoded_bytes: int,
) -> ValidatedData:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            reject(
                f"{info.filename}: an .npz holds only .npy arrays "
                f"({', '.join(NPZ_KEYS)}); is this an image-folder zip named .npz?"
            )
        members[info.filename[: -len(".npy")]] = info
    unknown = sorted(set(members) - set(NPZ_KEYS))
    if unknown:
        reject(
            f"unknown arrays {', '.join(repr(k) for k in unknown)}; "
            f"an .npz may hold only x, y and class_names"
        )
    if "x" not in members:
        reject("x: missing; the .npz must hold the images as x")

    # Headers first: shapes and dtypes are checked before any data is read.
    headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    for key, info in members.items():
        headers[key] = _npy_header(zf, info, key)
    x_shape, x_dtype = headers["x"]
    layout = _check_x_header(x_shape, x_dtype, image_size)
    n = x_shape[0]
    if "y" in headers:
        _check_y_header(*headers["y"], n)
    if "class_names" in headers:
        if "y" not in headers:
            reject("class_names: given without y; labels are needed for names to mean anything")
        if headers["y"][1].kind == "f":
            reject("class_names: float y holds regression targets, which have no classes")
        names_shape, names_dtype = headers["class_names"]
        if names_dtype.kind not in "US":
            reject(_dtype_problem("class_names", names_dtype, "use np.array(names, dtype=str)"))
        if len(names_shape) != 1 or not 1 <= names_shape[0] <= MAX_CLASSES:
            reject(f"class_names: expected a list of 1 to {MAX_CLASSES} names, shape {names_shape}")
    expanded = sum(math.prod(s) * d.itemsize for s, d in headers.values())
    if x_dtype.kind == "f" and x_dtype.itemsize > 4:
        expanded += math.prod(x_shape) * 4  # the float32 copy
    if expanded > max_decoded_bytes:
        raise too_much("the arrays hold", expanded, max_decoded_bytes)

    arrays = {key: _read_array(zf, info, key) for key, info in members.items()}
    x = _check_x_values(arrays["x"])
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    elif x.ndim == 3:
        x = x[:, None, :, :]
    source: dict[str, Any] = {"layout": layout}
    if image_size is not None and x.shape[-2:] != (image_size, image_size):
        source["resized_from"] = [int(x.shape[-2]), int(x.shape[-1])]
        x = resize(torch.from_numpy(np.ascontiguousarray(x)), image_size).numpy()

    y, class_names = None, []
    if "y" in arrays and arrays["y"].dtype.kind == "f":
        y, class_names = _check_targets(arrays["y"])
        source["task"] = "regression"
    elif "y" in arrays:
        given = None
        if "class_names" in arrays:
            given = _check_class_names(arrays["class_names"])
        y, class_names = _check_labels(arrays["y"], given)
    return ValidatedData(np.ascontiguousarray(x), y, class_names, FORMAT_NPZ, source)


def _check_x_header(shape: tuple[int, ...], dtype: np.dtype[Any], image_size: int | None) -> str:
    """The layout of x ("NHW", "NCHW" or "NHWC") after checking its shape and dtype."""
    if dtype.kind == "O" or not (dtype == np.uint8 or dtype.kind == "f"):
        reject(
            _dtype_problem("x", dtype, "use uint8 (0-255) or float (0-1), e.g. x.astype(np.uint8)")
        )
    if len(shape) not in (3, 4):
        reject(
            f"x: expected 3 or 4 dimensions (N x H x W or N x C x H x W), "
            f"got {len(shape)} (shape {list(shape)})"
        )
    if len(shape) == 3:
        layout, (h, w) = "NHW", shape[1:]
    elif shape[1] in (1, 3):
        layout, (h, w) = "NCHW", shape[2:]
    elif shape[3] in (1, 3):
        # Channels last, as PIL and most image libraries produce; H and W are >= 8, so a
        # second dimension of 1 or 3 can only be channels.
        layout, (h, w) = "NHWC", shape[1:3]
    else:
        reject(
            f"x: expected 1 or 3 channels (N x C x H x W, or N x H x W x C), "
            f"got shape {list(shape)}"
        )
    if shape[0] < 1:
        reject("x: holds no samples (N is 0)")
    if image_size is None:
        if h != w:
            reject(
                f"x: images are {h}x{w} (H x W); they must be square, or send image_size "
                f"to resize them"
            )
        if not MIN_SIDE <= h <= MAX_SIDE:
            reject(
                f"x: images are {h}x{w}; sides from {MIN_SIDE} to {MAX_SIDE} pixels are "
                f"accepted (send image_size to resize them)"
            )
    elif min(h, w) < MIN_SIDE or h * w > MAX_SOURCE_PIXELS:
        reject(
            f"x: images are {h}x{w}; sides of at least {MIN_SIDE} and at most "
            f"{MAX_SOURCE_PIXELS} pixels are accepted"
        )
    return layout


def _check_y_header(shape: tuple[int, ...], dtype: np.dtype[Any], n: int) -> None:
    if dtype.kind == "f":
        # Float y: regression targets, one value ([N]) or K values ([N, K]) per sample.
        if len(shape) not in (1, 2) or (len(shape) == 2 and not 1 <= shape[1] <= MAX_TARGETS):
            reject(
                f"y: float regression targets must have shape [N] or [N, K] with K from 1 to "
                f"{MAX_TARGETS}, got shape {list(shape)}"
            )
    elif dtype.kind not in "iu":
        reject(
            _dtype_problem(
                "y",
                dtype,
                "expected integer labels 0..K-1 (y.astype(np.int64)) or float regression targets",
            )
        )
    elif len(shape) != 1:
        reject(f"y: expected one label per sample (shape [N]), got shape {list(shape)}")
    if shape[0] != n:
        reject(f"y: has {shape[0]} labels, but x has {n} samples")


def _check_targets(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Regression targets as float32 [N, K], and their names target_0..target_{K-1}."""
    y = raw.astype(np.float32).reshape(len(raw), -1)
    if not np.isfinite(y).all():
        reject("y: regression targets contain NaN or infinite values")
    return y, target_names(y.shape[1])


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    try:
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except _READ_ERRORS as exc:
        reject(f"{key}: could not be read, the file may be truncated ({exc})")


def _check_x_values(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        reject("x: contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        reject(
            f"x: float values must lie in [0, 1], found {lo:.4g} to {hi:.4g}; "
            f"divide 0-255 data by 255, or send it as uint8"
        )
    return x.astype(np.float32, copy=False)


def _check_class_names(raw: np.ndarray) -> list[str]:
    names: list[str] = []
    for i, value in enumerate(raw.tolist()):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                reject(f"class_names[{i}]: not UTF-8 text")
        name = str(value)
        if not name.strip():
            reject(f"class_names[{i}]: empty name")
        if has_control_chars(name):
            reject(f"class_names[{i}]: contains control characters")
        if len(name) > MAX_CLASS_NAME_CHARS:
            reject(f"class_names[{i}]: longer than {MAX_CLASS_NAME_CHARS} characters")
        names.append(name)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        reject(f"class_names: repeated names {', '.join(repr(r) for r in repeated[:5])}")
    return names


def _check_labels(raw: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    y = raw.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        reject(f"y: labels must be 0 or more, found {lo}")
    if names is not None:
        if hi >= len(names):
            reject(
                f"y: label {hi} is out of range for {len(names)} class_names (0..{len(names) - 1})"
            )
        return y, names
    if hi >= MAX_CLASSES:
        reject(f"y: label {hi} implies more than {MAX_CLASSES} classes")
    # Without names, classes are 0..max(y); unused labels in between keep their place.
    return y, [str(k) for k in range(hi + 1)]


# -------------------------------------------------------------------- image folder
@dataclass
class _ImageEntry:
    info: zipfile.ZipInfo
    path: str
    label: int
    mode: str = ""
    size: tuple[int, int] = (0, 0)


def _image_paths(infos: list[zipfile.ZipInfo]) -> list[tuple[list[str], zipfile.ZipInfo]]:
    """(path parts, entry) for every image; rejects unsafe paths and non-image files."""
    kept: list[tuple[list[str], zipfile.ZipInfo]] = []
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p]
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
            reject(f"{info.filename}: absolute paths and '..' are not accepted in the zip")
        if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if parts[-1].lower() in IGNORED_FILES:
            continue
        if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            reject(
                f"{info.filename}: not a PNG or JPEG image; the zip may hold only "
                f"class folders of .png, .jpg or .jpeg files"
            )
        kept.append((parts, info))
    if not kept:
        reject("the zip holds no PNG or JPEG images (expected class/image.png)")
    # One folder around everything (zip -r data.zip data/) is a root, not the only class.
    roots = {parts[0] for parts, _ in kept}
    if len(roots) == 1 and all(len(parts) >= 3 for parts, _ in kept):
        kept = [(parts[1:], info) for parts, info in kept]
    for parts, info in kept:
        if len(parts) < 2:
            reject(f"{info.filename}: images must be inside a class folder (class/image.png)")
    return sorted(kept, key=lambda item: item[0])


def _read_image_folder(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    *,
    image_size: int | None,
    max_decoded_bytes: int,
) -> ValidatedData:
    paths = _image_paths(infos)
    class_names = sorted({parts[0] for parts, _ in paths})
    if len(class_names) > MAX_CLASSES:
        reject(f"the zip has {len(class_names)} class folders; at most {MAX_CLASSES} are accepted")
    for name in class_names:
        if has_control_chars(name):
            reject(f"{name!r}: class folder names must not contain control characters")
        if len(name) > MAX_CLASS_NAME_CHARS:
            reject(f"{name[:40]}...: class folder names may be at most {MAX_CLASS_NAME_CHARS} long")
    index = {name: i for i, name in enumerate(class_names)}
    entries = [_ImageEntry(info, info.filename, index[parts[0]]) for parts, info in paths]

    # Pass 1, headers only: formats, modes and sizes decide the stored shape before any
    # pixel is decoded, so one array of the final size can be filled in pass 2.
    for entry in entries:
        try:
            with zf.open(entry.info) as fh, Image.open(fh, formats=("PNG", "JPEG")) as img:
                entry.mode, entry.size = img.mode, img.size
        except UnidentifiedImageError:
            reject(f"{entry.path}: not a PNG or JPEG image")
        except _READ_ERRORS as exc:
            reject(f"{entry.path}: not a readable image ({exc})")
    grey = all(e.mode in GREY_MODES for e in entries)
    channels = 1 if grey else 3
    side = image_size if image_size is not None else _common_side(entries)
    for entry in entries:
        w, h = entry.size
        if min(w, h) < 1 or w * h > MAX_SOURCE_PIXELS:
            reject(f"{entry.path}: {w}x{h} pixels is more than the {MAX_SOURCE_PIXELS} accepted")
    decoded = len(entries) * channels * side * side
    if decoded > max_decoded_bytes:
        raise too_much("the images decode to", decoded, max_decoded_bytes)

    x = np.empty((len(entries), channels, side, side), dtype=np.uint8)
    for i, entry in enumerate(entries):
        try:
            data = zf.read(entry.info)
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as img:
                img.load()
                x[i] = _pixels(img, grey=grey, side=side)
        except UnidentifiedImageError:
            reject(f"{entry.path}: not a PNG or JPEG image")
        except _READ_ERRORS as exc:
            reject(f"{entry.path}: not a readable image ({exc})")
    y = np.array([e.label for e in entries], dtype=np.int64)
    sizes = Counter(e.size for e in entries)
    source: dict[str, Any] = {"mode": "L" if grey else "RGB"}
    if image_size is not None:
        source["resized_from"] = [[w, h] for (w, h), _ in sizes.most_common(5)]
    return ValidatedData(x, y, class_names, FORMAT_IMAGE_FOLDER, source)


def _common_side(entries: list[_ImageEntry]) -> int:
    """The one square size every image has; rejects differing or out-of-range sizes."""
    first = entries[0]
    for entry in entries:
        if entry.size != first.size:
            (w0, h0), (w1, h1) = first.size, entry.size
            reject(
                f"images differ in size: {first.path} is {w0}x{h0}, {entry.path} is "
                f"{w1}x{h1}; send image_size to resize them all to one size"
            )
    w, h = first.size
    if w != h:
        reject(
            f"{first.path}: images are {w}x{h} (width x height); they must be square, or "
            f"send image_size to resize them"
        )
    if not MIN_SIDE <= w <= MAX_SIDE:
        reject(
            f"{first.path}: images are {w}x{h}; sides from {MIN_SIDE} to {MAX_SIDE} pixels "
            f"are accepted (send image_size to resize them)"
        )
    return w


def _pixels(img: Image.Image, *, grey: bool, side: int) -> np.ndarray:
    """One image as uint8 [C, side, side]: grey "L" or "RGB", alpha dropped."""
    if img.mode.startswith("I"):
        # 16-bit grey PNGs: map 0-65535 onto 0-255 (PIL's own convert would clip instead).
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    img = img.convert("L" if grey else "RGB")
    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None, :, :] if grey else arr.transpose(2, 0, 1)


# ---------------------------------------------------------------- statistics, store
def describe(data: ValidatedData) -> dict[str, Any]:
    """The row's meta: class counts, the fixed holdout's sizes and train-split statistics."""
    n = len(data.x)
    regression = data.y is not None and data.y.dtype.kind == "f"
    test = holdout_mask(None if regression else data.y, n)
    train_idx = np.flatnonzero(~test)
    mean, std = channel_stats(data.x, train_idx)
    meta: dict[str, Any] = {
        "mean": mean,
        "std": std,
        "stats_split": "train",
        "split_sizes": {"train": len(train_idx), "test": int(test.sum())},
        "source": data.source,
    }
    meta["task"] = "regression" if regression else "classification"
    if regression:
        assert data.y is not None
        meta["targets"] = int(data.y.shape[1])
        meta["target_mean"] = [round(float(v), 6) for v in data.y[~test].mean(axis=0)]
        meta["target_std"] = [round(float(v), 6) for v in data.y[~test].std(axis=0)]
    elif data.y is not None:
        counts = np.bincount(data.y, minlength=len(data.class_names))
        meta["class_counts"] = {
            name: int(c) for name, c in zip(data.class_names, counts, strict=True)
        }
    return meta


def channel_stats(x: np.ndarray, indices: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0-1 scale over `indices` (float64, in chunks)."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    count = 0
    for start in range(0, len(indices), STATS_CHUNK):
        chunk = x[indices[start : start + STATS_CHUNK]].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    # The unbiased estimate, floored like worker.data's: a constant channel must not divide by 0.
    var = np.maximum(squares - count * mean**2, 0.0) / max(count - 1, 1)
    std = np.maximum(np.sqrt(var), 1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def store(data: ValidatedData, *, artifact_dir: Path, dataset_id: str) -> tuple[str, int]:
    """Write the arrays atomically; returns (path relative to artifact_dir, size in bytes)."""
    folder = artifact_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{dataset_id}.npz"
    tmp = folder / f".{dataset_id}.npz.tmp"
    arrays: dict[str, np.ndarray] = {"x": data.x}
    if data.y is not None and data.y.dtype.kind == "f":
        arrays["y"] = data.y.astype(np.float32)  # regression targets: no class names
    elif data.y is not None:
        arrays["y"] = data.y.astype(np.int64)
        arrays["class_names"] = np.array(data.class_names, dtype=np.str_)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"datasets/{dataset_id}.npz", final.stat().st_size


# ---------------------------------------------------------------------- the service
def dataset_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        format=row.format,  # type: ignore[arg-type]
        num_samples=row.num_samples,
        task=(row.meta or {}).get("task", "classification"),
        targets=(row.meta or {}).get("targets"),
        num_classes=len(row.classes),
        classes=[str(c) for c in row.classes],
        labeled=row.labeled,
        shape=list(row.shape),
        dtype=row.dtype,  # type: ignore[arg-type]
        meta=dict(row.meta or {}),
        size_bytes=row.size_bytes,
        created_at=row.created_at,
    )


def create_dataset(
    session: Session,
    *,
    owner: str,
    upload: ReceivedUpload,
    artifact_dir: Path,
    max_upload_bytes: int,
) -> Dataset:
    """Validate an upload, store it, and record it; nothing is stored if any step fails."""
    form = parse_form(DatasetForm, upload.fields)
    data = read_upload(
        upload.path,
        filename=upload.filename,
        image_size=form.image_size,
        max_decoded_bytes=EXPANSION_FACTOR * max_upload_bytes,
    )
    meta = describe(data)
    dataset_id = new_id()
    rel_path, size = store(data, artifact_dir=artifact_dir, dataset_id=dataset_id)
    row = Dataset(
        id=dataset_id,
        owner=owner,
        name=form.name or display_name(upload.filename),
        format=data.format,
        num_samples=len(data.x),
        # Regression targets have no classes; their names live in meta["targets"].
        classes=[] if meta.get("task") == "regression" else data.class_names,
        labeled=data.y is not None,
        shape=[int(d) for d in data.x.shape[1:]],
        dtype="uint8" if data.x.dtype == np.uint8 else "float32",
        meta=meta,
        size_bytes=size,
        path=rel_path,
        created_at=utcnow(),
    )
    try:
        session.add(row)
        session.commit()
    except BaseException:
        # The row is the only way to find the file: without it the file would be an orphan.
        session.rollback()
        (artifact_dir / rel_path).unlink(missing_ok=True)
        raise
    log.info(
        "dataset %s (%s, %d samples, shape %s) stored for %s",
        dataset_id,
        data.format,
        len(data.x),
        row.shape,
        owner,
    )
    return row


def get_owned(session: Session, owner: str, dataset_id: str, *, lock: bool = False) -> Dataset:
    return owned.get_owned(session, Dataset, owner=owner, id_=dataset_id, what="dataset", lock=lock)


def list_datasets(
    session: Session, *, owner: str, page_size: int, page_token: str | None
) -> tuple[list[Dataset], str | None]:
    return owned.list_owned(
        session, Dataset, owner=owner, page_size=page_size, page_token=page_token
    )


def unfinished_jobs_using(session: Session, *, owner: str, key: str, value: str) -> list[str]:
    """Ids of the owner's unfinished jobs whose spec has `key: value` anywhere."""
    rows = session.execute(
        select(Job.id, Job.spec).where(
            Job.owner == owner, Job.state.not_in([s.value for s in FINISHED_STATES])
        )
    ).all()
    return [job_id for job_id, spec in rows if _mentions(spec, key, value)]


def _mentions(node: Any, key: str, value: str) -> bool:
    if isinstance(node, dict):
        return node.get(key) == value or any(_mentions(v, key, value) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, key, value) for v in node)
    return False


def delete_dataset(session: Session, *, owner: str, dataset_id: str, artifact_dir: Path) -> None:
    row = get_owned(session, owner, dataset_id, lock=True)
    users = unfinished_jobs_using(session, owner=owner, key="id", value=dataset_id)
    if users:
        session.rollback()
        raise ProblemError(
            409,
            f"dataset {dataset_id} is used by unfinished job(s) {', '.join(users[:5])}; "
            f"cancel them or wait for them to finish first",
            type_="conflict",
        )
    path = artifact_dir / row.path
    session.delete(row)
    session.commit()
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("dataset %s deleted, but its file %s could not be removed", dataset_id, path)
    log.info("dataset %s deleted by %s", dataset_id, owner)
