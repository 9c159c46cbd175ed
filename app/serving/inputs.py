"""Turning what clients send into the model's input: float32 [N, C, H, W] on its scale.

Accepted:
- JSON nested lists, N x C x H x W or N x H x W (C = 1), on the training data's scale
  (0-1 or 0-255, model.json `input.scale`), as `/predict` and V2 take them;
- PNG and JPEG files, grey or colour, any size: pixels 0-255 are mapped to the model's
  scale.

Then, for `/predict`: grey inputs for a colour model are repeated over three channels,
colour inputs for a grey model become luma (ITU-R 601, as Pillow's "L"), and any other
size is resized to model.json's H x W, which the model's own preprocessing and ONNX
graph expect. Images are decoded and resized exactly as uploads are (app.core.images),
so that a model serves the pixels it trained on. V2 is strict instead: its
metadata promises [-1, C, H, W] exactly.

Every problem is an `InputError` that names the field (or file) and says what was wrong;
limits answer 413.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from app.core.images import image_pixels, resize_images

# Pillow's "L" conversion weights (ITU-R 601-2 luma).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
IMAGE_FORMATS = ("PNG", "JPEG")


class InputError(ValueError):
    """A client's input that cannot be served; `status` is 413, 415, 422 or 400."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_pixels: int


# ------------------------------------------------------------------------ JSON tensors
def nested_array(data: Any, *, field: str, limits: Limits) -> np.ndarray:
    """A rectangular, finite float32 array from JSON nested lists (any rank)."""
    if not isinstance(data, list):
        raise InputError(
            field, f"must be a list of images (N x C x H x W or N x H x W), got {_kind(data)}"
        )
    if not data:
        raise InputError(field, "is empty: send at least one image")
    if len(data) > limits.max_batch:
        raise InputError(
            field,
            f"has {len(data)} images; at most {limits.max_batch} per request",
            status=413,
        )
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise _first_problem(data, field) from None
    if arr.dtype.kind not in "iuf":
        raise _first_problem(data, field)
    return _finite_float32(arr, field)


def flat_array(data: Any, shape: Sequence[int], *, field: str) -> np.ndarray:
    """V2 tensor data (flat row-major list, or nested) reshaped to `shape`."""
    if not isinstance(data, list):
        raise InputError(field, f"must be a list of numbers, got {_kind(data)}")
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise _first_problem(data, field) from None
    if arr.dtype.kind not in "iuf" and arr.size:
        raise _first_problem(data, field)
    expected = math.prod(shape)
    if arr.size != expected:
        raise InputError(field, f"has {arr.size} values but shape {list(shape)} needs {expected}")
    return _finite_float32(arr.reshape(shape), field)


# ------------------------------------------------------------------------ .npy bodies
NPY_MAGIC = b"\x93NUMPY"


def npy_array(body: bytes, *, field: str, limits: Limits) -> tuple[np.ndarray, np.dtype]:
    """A `.npy` body (numpy.save's format) as float32, and the dtype it was sent in; read
    without unpickling: the header is parsed first, so that an object array, a
    non-numeric dtype, a bad shape, too many pixels or images, or a body shorter or
    longer than the header promises is refused by name before any data is touched."""
    if not body.startswith(NPY_MAGIC):
        raise InputError(field, "is not a .npy array (numpy.save's format)")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, SyntaxError) as exc:
        raise InputError(field, f"has an unreadable .npy header ({_short(exc)})") from None
    # numpy checks that each dimension is an int, not that it is >= 0 (nor that it is no
    # bool): a header of (-2, -2) would pass the length check below and fail reshape.
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(field, f"has an invalid .npy shape {list(shape)}")
    if dtype.hasobject or dtype.kind not in "iuf" or dtype.fields is not None:
        raise InputError(field, f"holds {dtype}; send numbers (float32, float64, uint8, integers)")
    # Rank and pixels from the header, before any copy: an honest 1 GiB body of one
    # 32768 x 32768 image is refused here, not after a 4 GiB float32 copy.
    if len(shape) not in (3, 4):
        raise InputError(
            field,
            f"has shape {list(shape)}: images are N x C x H x W or N x H x W",
        )
    if shape[-2] * shape[-1] > limits.max_pixels:
        raise InputError(
            field,
            f"images of {shape[-2]} x {shape[-1]} pixels exceed the limit of "
            f"{limits.max_pixels} pixels",
            status=413,
        )
    if shape and shape[0] > limits.max_batch:
        raise InputError(
            field, f"has {shape[0]} images; at most {limits.max_batch} per request", status=413
        )
    count = math.prod(shape)
    data = memoryview(body)[stream.tell() :]
    if len(data) != count * dtype.itemsize:
        raise InputError(
            field,
            f"has {len(data)} bytes of data where its header ({dtype}, shape {list(shape)}) "
            f"needs {count * dtype.itemsize}",
        )
    arr = np.frombuffer(data, dtype=dtype, count=count)
    arr = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    # A copy: the body's buffer is read-only, and a float32 body would otherwise be it.
    return _finite_float32(arr.astype(np.float32), field), dtype


def _finite_float32(arr: np.ndarray, field: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        where = field + "".join(f"[{i}]" for i in index)
        raise InputError(where, f"is {float(arr[index])}: values must be finite float32 numbers")
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"the number {value!r}"


def _first_problem(data: list[Any], field: str) -> InputError:
    """Where nested lists stop being a rectangular block of numbers, as an InputError."""
    shape: list[int] = []
    node: Any = data
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    stack: list[tuple[Any, int, str]] = [(data, 0, field)]
    while stack:
        node, depth, path = stack.pop()
        if depth < len(shape):
            if not isinstance(node, list):
                return InputError(
                    path, f"is {_kind(node)} where a list of {shape[depth]} was expected"
                )
            if len(node) != shape[depth]:
                return InputError(
                    path,
                    f"has {len(node)} items where {shape[depth]} were expected: "
                    "every image must have the same shape",
                )
            stack.extend(
                (child, depth + 1, f"{path}[{i}]") for i, child in reversed(list(enumerate(node)))
            )
        elif isinstance(node, list):
            return InputError(path, "is a list where a number was expected")
        elif isinstance(node, bool) or not isinstance(node, int | float):
            return InputError(path, f"is {_kind(node)}, not a number")
        elif isinstance(node, int) and abs(node) >= 2**63:
            return InputError(path, "is too large for float32")
    return InputError(field, "must be a rectangular block of numbers")


def conform(
    x: np.ndarray, *, field: str, shape: tuple[int, int, int], limits: Limits, strict: bool
) -> np.ndarray:
    """[N, C, H, W] (or [N, H, W]) float32 -> the model's [N, C, H, W].

    `strict` (V2) demands exactly [N, C, H, W]; otherwise channels are converted and the
    size is resized as the module doc says.
    """
    c, h, w = shape
    if strict and x.ndim != 4:
        raise InputError(
            field, f"must be [N, {c}, {h}, {w}], got shape {list(x.shape)}", status=400
        )
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(
            field,
            f"has shape {list(x.shape)}: images are N x C x H x W or N x H x W "
            f"(this model takes C={c}, H={h}, W={w})",
        )
    n, xc, xh, xw = x.shape
    if n == 0 or xc == 0 or xh == 0 or xw == 0:
        raise InputError(field, f"has an empty dimension: shape {list(x.shape)}")
    if n > limits.max_batch:
        raise InputError(
            field, f"has {n} images; at most {limits.max_batch} per request", status=413
        )
    if xh * xw > limits.max_pixels:
        raise InputError(
            field,
            f"images of {xh} x {xw} pixels exceed the limit of {limits.max_pixels} pixels",
            status=413,
        )
    if strict:
        if (xc, xh, xw) != (c, h, w):
            raise InputError(
                field, f"must be [N, {c}, {h}, {w}], got shape {list(x.shape)}", status=400
            )
        return np.ascontiguousarray(x)
    if xc != c:
        if xc == 1 and c == 3:
            x = np.repeat(x, 3, axis=1)
        elif xc == 3 and c == 1:
            x = np.tensordot(x, LUMA, axes=([1], [0]))[:, None].astype(np.float32)
        else:
            raise InputError(
                field,
                f"has {xc} channels (shape {list(x.shape)}, channels first); this model takes "
                f"{c} (grey and 3-channel colour inputs are converted)",
            )
    if (xh, xw) != (h, w):
        x = resize_images(x, (h, w))
    return np.ascontiguousarray(x, dtype=np.float32)


# The slack on a model's range before inputs are refused as off scale (fraction of it):
# rounding and resizing may overshoot 1.0 or 255 by a hair.
RANGE_SLACK = 1e-3


def on_model_scale(
    x: np.ndarray, *, field: str, model_scale: float, given_scale: float | None
) -> np.ndarray:
    """`x` on the model's scale, rescaled from `given_scale` when the caller names one.
    Either way the values must lie on the scale they claim (the model's, or the given
    one): 0-255 pixels sent to a 0-1 model, or said to be on 0-1, would be answered with a
    confident, wrong label instead of an error."""
    claimed = model_scale if given_scale is None else given_scale
    lo, hi = float(x.min()), float(x.max())
    slack = RANGE_SLACK * claimed
    if lo < -slack or hi > claimed + slack:
        if given_scale is None:
            raise InputError(
                field,
                f"has values from {lo:g} to {hi:g}, but this model takes inputs on "
                f"0-{model_scale:g} (its training data's scale): send them on that scale, or "
                f'add "scale": <the scale they are on> (e.g. 255) to have them rescaled',
            )
        raise InputError(
            field,
            f"has values from {lo:g} to {hi:g}, outside the 0-{given_scale:g} that "
            f'"scale" says: give the scale the values are on (this model takes '
            f"0-{model_scale:g})",
        )
    if given_scale is not None and given_scale != model_scale:
        return (x * np.float32(model_scale / given_scale)).astype(np.float32, copy=False)
    return x


# ------------------------------------------------------------------------------ images
def images_to_input(
    files: Sequence[tuple[str, bytes]],
    *,
    field: str,
    shape: tuple[int, int, int],
    scale: float,
    limits: Limits,
) -> np.ndarray:
    """PNG/JPEG files -> the model's [N, C, H, W] float32 on its scale."""
    if not files:
        raise InputError(field, "is missing: send PNG or JPEG images as `files` parts")
    if len(files) > limits.max_batch:
        raise InputError(
            field, f"has {len(files)} files; at most {limits.max_batch} per request", status=413
        )
    out = np.empty((len(files), *shape), dtype=np.float32)
    for i, (filename, data) in enumerate(files):
        out[i] = image_to_array(
            data, field=f"{field}[{i}]", filename=filename, shape=shape, limits=limits
        )
    # Pixels are 0-255; the model takes its training data's scale.
    if scale != 255.0:
        out *= np.float32(scale / 255.0)
    return out


def image_to_array(
    data: bytes, *, field: str, filename: str, shape: tuple[int, int, int], limits: Limits
) -> np.ndarray:
    """One image -> [C, H, W] float32, 0-255, the model's channels and size."""
    c, h, w = shape
    name = field
    what = f"{filename!r}" if filename else "the file"
    if not data:
        raise InputError(name, f"{what} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputError(
            name, f"{what} has more than the limit of {limits.max_pixels} pixels", status=413
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(name, f"{what} is not a PNG or JPEG image") from None
    if image.format not in IMAGE_FORMATS:
        raise InputError(name, f"{what} is {image.format}; PNG and JPEG are accepted", status=415)
    iw, ih = image.size
    if iw * ih > limits.max_pixels:
        raise InputError(
            name,
            f"{what} has {iw} x {ih} pixels, more than the limit of {limits.max_pixels}",
            status=413,
        )
    try:
        image.load()
        pixels = image_pixels(image, c)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(name, f"{what} is corrupt or truncated ({_short(exc)})") from None
    if pixels.shape[-2:] != (h, w):
        pixels = resize_images(pixels[None], (h, w))[0]
    return pixels


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def json_object(body: bytes, *, expected: str, status: int = 422) -> dict[str, Any]:
    """A JSON body that must be an object; InputError naming `body` otherwise. `expected`
    finishes the sentence "must be a JSON object...": what the object holds."""
    try:
        data = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise InputError("body", f"is not valid JSON ({exc})", status=status) from None
    if not isinstance(data, dict):
        raise InputError("body", f"must be a JSON object{expected}", status=status)
    return data


def loads_json(body: bytes) -> object:
    """Parse a JSON body fast (orjson: a 3x32x32 float image in 0.15 ms, json takes 2 ms).

    orjson refuses what strict JSON refuses (NaN, Infinity, integers past 64 bits); the
    json module reads those, so that the checks after it can name the element at fault.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)
