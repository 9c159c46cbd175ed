"""Uploaded datasets: validated on arrival, stored, listed and deleted.

Everything a training job could trip over is checked here, once, when the data arrives
(shapes, dtypes, value ranges, label ranges, readable images), so that a job never fails
an hour in because of the data. Two kinds of upload are read:

- an `.npz` with `x`, optional `y` and optional `class_names` (app.services.npz_upload);
- a zip of an image-folder tree, `class/image.png` (app.services.image_folder_upload).

Both are stored the same way, by app.core.datasets.stored, which the worker reads.
docs/datasets.md is the user's description of the rules.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from app.core.datasets.stored import describe, write_dataset
from app.models import Dataset
from app.models.base import new_id, utcnow
from app.schemas.dataset import DatasetForm, DatasetOut
from app.schemas.names import display_name
from app.services import owned
from app.services.image_folder_upload import read_image_folder
from app.services.npz_upload import read_npz
from app.services.upload_rules import (
    MAX_ZIP_ENTRIES,
    READ_ERRORS,
    ValidatedData,
    reject,
    too_much,
)

log = logging.getLogger(__name__)


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
    except READ_ERRORS as exc:
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
            return read_npz(zf, infos, image_size=image_size, max_decoded_bytes=max_decoded_bytes)
        return read_image_folder(
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


def dataset_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        format=row.format,  # type: ignore[arg-type]
        url=(row.meta or {}).get("url"),
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
    form: DatasetForm,
    path: Path,
    filename: str | None,
    artifact_dir: Path,
    max_decoded_bytes: int,
) -> Dataset:
    """Validate an uploaded file (at `path`), store it, and record it; nothing is stored
    if any step fails."""
    data = read_upload(
        path, filename=filename, image_size=form.image_size, max_decoded_bytes=max_decoded_bytes
    )
    meta = {**describe(data.x, data.y, data.class_names), "source": data.source}
    dataset_id = new_id()
    rel_path, size = write_dataset(
        artifact_dir, dataset_id, x=data.x, y=data.y, class_names=data.class_names
    )
    row = Dataset(
        id=dataset_id,
        owner=owner,
        name=form.name or display_name(filename),
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
    owned.record_with_files(session, row, files=artifact_dir / rel_path)
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


def delete_dataset(session: Session, *, owner: str, dataset_id: str, artifact_dir: Path) -> None:
    owned.delete_unused(
        session,
        Dataset,
        owner=owner,
        id_=dataset_id,
        what="dataset",
        used_as="is used by",
        files=lambda row: artifact_dir / row.path,
    )
