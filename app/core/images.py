"""Pixels from image files, and resizing: one way for uploads, training and serving.

A model must see the same pixels when it trains on an uploaded image folder (or an
`image_size` filter) as when it serves a PNG sent to `/predict`. So every path decodes
with `image_pixels` and resizes with `resize_images`: bilinear, antialiased (which only
changes anything when shrinking), not aspect-preserving. Uploads then round to uint8 for
storage; serving keeps float32.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# A single source image, at most (pixels): uploads, datasets by URL.
MAX_SOURCE_PIXELS = 4096 * 4096
# The EXIF tag that says how a photo was held.
EXIF_ORIENTATION = 0x0112
# Images resized per call at most; bounds the float copy of large sets.
RESIZE_CHUNK = 4096
# Modes of 16-bit grey images (PNG); their 0-65535 range is mapped onto 0-255.
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Modes read as one grey channel; every other mode is converted to RGB.
GREY_MODES = frozenset({"1", "L", "LA", *WIDE_GREY_MODES})

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def resize_images(x: ArrayT, size: int | tuple[int, int]) -> ArrayT:
    """Resize a batch [N, C, H, W] to `size` (a side, or (H, W)).

    Takes and returns a torch tensor or a numpy array; uint8 stays uint8 (rounded and
    clipped), anything else comes back as float32.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    as_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
    dtype = torch.uint8 if t.dtype == torch.uint8 else torch.float32
    out = [torch.empty(0, t.shape[1], *hw, dtype=dtype)]
    for start in range(0, t.shape[0], RESIZE_CHUNK):
        chunk = t[start : start + RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=hw, mode="bilinear", align_corners=False, antialias=True)
        if dtype == torch.uint8:
            chunk = chunk.round().clamp(0, 255).to(torch.uint8)
        out.append(chunk)
    result = torch.cat(out)
    return result.numpy() if as_numpy else result  # type: ignore[return-value]


def is_grey(mode: str) -> bool:
    """Whether a PIL mode is one grey channel (stored and served as C = 1)."""
    return mode in GREY_MODES


def image_pixels(image: Image.Image, channels: int) -> np.ndarray:
    """A decoded image as [C, H, W] float32 on 0-255 with `channels` channels.

    EXIF orientation is applied (a phone's portrait photo stands upright), alpha is
    dropped, 16-bit grey is mapped onto 0-255; grey to RGB repeats the channel, RGB to
    grey is Pillow's luma ("L"). Raises ValueError for pixels that are not PNG/JPEG-like.
    """
    return _pixels(upright(image), channels)


def upright(image: Image.Image) -> Image.Image:
    """The image with its EXIF orientation applied; itself when there is none to apply
    (exif_transpose copies every image, which costs a third of decoding a small PNG)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image) or image


def _pixels(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode in WIDE_GREY_MODES:
        grey = np.asarray(image, dtype=np.float32) / np.float32(257.0)
        return np.repeat(grey[None], 3, axis=0) if channels == 3 else grey[None]
    if image.mode == "F":
        raise ValueError("floating-point images are not PNG or JPEG pixels")
    converted = image.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(converted, dtype=np.float32)
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def stored_pixels(image: Image.Image, channels: int, side: int) -> np.ndarray:
    """One image as uint8 [C, side, side], as a dataset holds it (an uploaded image
    folder, or one read by URL while training): decoded and resized exactly as
    `/predict` decodes and resizes a PNG or JPEG, then rounded."""
    image = upright(image)
    if image.mode == ("L" if channels == 1 else "RGB") and image.size == (side, side):
        # Already what is stored: the same values as the float path gives, without it
        # (the common case of a training set's files, decoded every epoch when streamed).
        arr = np.asarray(image, dtype=np.uint8)
        return arr[None].copy() if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))
    pixels = _pixels(image, channels)
    if pixels.shape[-2:] != (side, side):
        pixels = resize_images(pixels[None], side)[0]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
