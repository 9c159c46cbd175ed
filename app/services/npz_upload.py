"""Reading an uploaded `.npz`: `x`, optional `y` and `class_names`, never with pickle.

Headers first: every shape and dtype is checked, and the decoded size bounded, before
any array is read. Then values (finite, in range), labels (in range of the names) and
names (printable, unique). Layouts N x H x W, N x C x H x W and N x H x W x C are
accepted and stored as N x C x H x W.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from typing import Any

import numpy as np

from app.core.datasets import target_names
from app.core.images import MAX_SOURCE_PIXELS, resize_images
from app.schemas.names import has_control_chars
from app.services.upload_rules import (
    FORMAT_NPZ,
    MAX_CLASS_NAME_CHARS,
    MAX_CLASSES,
    MAX_TARGETS,
    MIN_SIDE,
    NPZ_KEYS,
    READ_ERRORS,
    ValidatedData,
    check_stored_side,
    reject,
    too_much,
)


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
    except READ_ERRORS as exc:
        reject(f"{key}: not a readable .npy array ({exc})")
    return tuple(int(d) for d in shape), dtype


def _dtype_problem(key: str, dtype: np.dtype[Any], wanted: str) -> str:
    if dtype.kind == "O":
        return (
            f"{key}: object arrays are not accepted (reading them would need pickle); "
            f"save {wanted} instead"
        )
    return f"{key}: dtype {dtype} is not accepted; {wanted}"


def read_npz(
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
        x = resize_images(x, image_size)

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
        check_stored_side("x", h, w, "H x W")
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
    except READ_ERRORS as exc:
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
