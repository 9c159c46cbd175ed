"""What every uploaded file is checked against: bounds, the errors that name the fault,
and the validated form of a dataset upload (shared by the .npz and image-folder readers).
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from app.config import DATASET_EXPANSION
from app.services.errors import TooLargeError, field_error, invalid

# The multipart part that carries an upload (datasets, checkpoints).
FILE_FIELD = "file"
FORMAT_NPZ = "npz"
FORMAT_IMAGE_FOLDER = "image_folder"

# Stored images are square, MIN_SIDE to MAX_SIDE pixels a side: every architecture takes
# 8x8 upwards, and the worker, the model's input shape and serving all use one side length.
MIN_SIDE = 8
MAX_SIDE = 512
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

# What a damaged archive or array stream can raise while being read.
READ_ERRORS = (
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


def reject(message: str, where: str = FILE_FIELD) -> NoReturn:
    """The uploaded file (or a form field) cannot be accepted; the message starts with
    the key or path at fault."""
    raise invalid(where, message)


def too_much(what: str, size: int, limit: int) -> TooLargeError:
    """An upload that is small on the wire but expands past the bound."""
    return TooLargeError(
        f"{what} {size} bytes, more than the {limit} accepted "
        f"({DATASET_EXPANSION} x STILLHOUSE_MAX_UPLOAD_BYTES)",
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


def check_stored_side(
    where: str, first: int, second: int, order: str, field: str = FILE_FIELD
) -> int:
    """The side of images stored as they came (no `image_size`): they must be square and
    MIN_SIDE to MAX_SIDE pixels a side. `first` x `second` as the source names its sizes
    (`order`: "H x W" for arrays, "width x height" for image files); a 422 names `field`."""
    if first != second:
        reject(
            f"{where}: images are {first}x{second} ({order}); they must be square, or send "
            f"image_size to resize them",
            field,
        )
    if not MIN_SIDE <= first <= MAX_SIDE:
        reject(
            f"{where}: images are {first}x{second}; sides from {MIN_SIDE} to {MAX_SIDE} pixels "
            f"are accepted (send image_size to resize them)",
            field,
        )
    return first
