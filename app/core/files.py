"""Files that must never be seen half-written: written to a temporary name, then renamed.

A process killed mid-write leaves the previous file (or none) in place, never a torn one.
Every artifact (checkpoints, model files, stored datasets, uploads moved into place) is
written through here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object], *, durable: bool = False) -> None:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it into place.

    `durable`: fsync the file before the rename, so that after a power loss the name
    never points at missing data (stored uploads, which nothing can recompute).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def move_into_place(src: Path, dest: Path) -> None:
    """A finished file (an upload spooled beside its final place) made durable, then
    renamed to `dest` on the same filesystem."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fsync_file(src)
    os.replace(src, dest)


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it; a folder already gone is fine."""
    shutil.rmtree(path, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove a file, or a folder with everything in it; one already gone is fine."""
    if path.is_dir():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)
