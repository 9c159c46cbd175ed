"""Reading an uploaded zip of an image-folder tree: `class/image.png`, optionally under one
root folder. Class names are the folder names, sorted; labels follow.

Two passes: headers first (formats, modes and sizes decide the stored shape and bound the
decoded size before any pixel is decoded), then the pixels into one array. Images are
decoded and resized as serving decodes and resizes them (app.core.images).
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.core.images import MAX_SOURCE_PIXELS, is_grey, stored_pixels
from app.schemas.names import has_control_chars
from app.services.upload_rules import (
    FORMAT_IMAGE_FOLDER,
    IGNORED_FILES,
    IMAGE_SUFFIXES,
    MAX_CLASS_NAME_CHARS,
    MAX_CLASSES,
    READ_ERRORS,
    ValidatedData,
    check_stored_side,
    reject,
    too_much,
)


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


def read_image_folder(
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
        except READ_ERRORS as exc:
            reject(f"{entry.path}: not a readable image ({exc})")
    grey = all(is_grey(e.mode) for e in entries)
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
                x[i] = stored_pixels(img, 1 if grey else 3, side)
        except UnidentifiedImageError:
            reject(f"{entry.path}: not a PNG or JPEG image")
        except READ_ERRORS as exc:
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
    return check_stored_side(first.path, w, h, "width x height")
