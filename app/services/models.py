"""Finished models: list, get, delete (row, then artifacts), and their artifact files."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.core.artifacts import artifact_store, available
from app.core.model_format import (
    INT8_ONNX_FILE,
    META_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    model_folder,
)
from app.models import TrainedModel
from app.schemas.model import ModelOut
from app.services import owned
from app.services.errors import NotFoundError, ServiceError, UnavailableError

# Downloadable artifacts and their media types.
ARTIFACTS = {
    WEIGHTS_FILE: "application/octet-stream",
    META_FILE: "application/json",
    ONNX_FILE: "application/octet-stream",
    INT8_ONNX_FILE: "application/octet-stream",
}


def get_owned(session: Session, owner: str, model_id: str, *, lock: bool = False) -> TrainedModel:
    return owned.get_owned(
        session, TrainedModel, owner=owner, id_=model_id, what="model", lock=lock
    )


def list_models(
    session: Session, *, owner: str, page_size: int, page_token: str | None
) -> tuple[list[TrainedModel], str | None]:
    return owned.list_owned(
        session, TrainedModel, owner=owner, page_size=page_size, page_token=page_token
    )


def folder_of(row: TrainedModel, artifact_dir: Path) -> Path:
    """The model's artifact folder, which must lie inside the artifact dir (a row that
    says otherwise is damage to the store: an internal error that names the model)."""
    try:
        return model_folder(artifact_dir, row.artifact_path)
    except ValueError as exc:
        raise ServiceError(f"model {row.id}: {exc}") from None


def model_out(row: TrainedModel, *, serving_backend: str, loaded: bool) -> ModelOut:
    meta = row.meta
    return ModelOut.model_validate(
        {
            "id": row.id,
            "name": row.name,
            "arch": row.arch,
            "task": meta.get("task", "classification"),
            "classes": [str(c) for c in meta.get("classes", [])],
            "num_classes": meta.get("num_classes", len(meta.get("classes", []))),
            "input": meta["input"],
            "normalization": meta.get("normalization", {"mean": None, "std": None}),
            "metrics": meta.get("metrics") or {},
            "job_id": row.job_id,
            "params": row.params,
            "size_bytes": row.size_bytes,
            "files": meta.get("files", [WEIGHTS_FILE, META_FILE]),
            "backends": meta.get("backends"),
            "onnx": meta.get("onnx"),
            "int8": meta.get("int8"),
            "serving_backend": serving_backend,
            "loaded": loaded,
            "created_at": row.created_at,
        }
    )


def artifact_file(row: TrainedModel, name: str, artifact_dir: Path) -> Path:
    if name not in ARTIFACTS:
        raise NotFoundError(
            "artifact",
            name,
            f"model {row.id} has no artifact {name!r}; artifacts are {', '.join(ARTIFACTS)}",
        )
    folder = folder_of(row, artifact_dir)
    with available(UnavailableError):
        artifact_store(artifact_dir).pull(folder)  # its first use on this machine
    path = folder / name
    if not path.is_file():
        reason = ""
        if name == ONNX_FILE:
            reason = (row.meta.get("onnx") or {}).get("error", "")
        elif name == INT8_ONNX_FILE:
            int8 = row.meta.get("int8")
            reason = (int8 or {}).get("error", "") if int8 else "its job did not ask for int8"
        raise NotFoundError(
            "artifact", name, f"model {row.id} has no {name}" + (f": {reason}" if reason else "")
        )
    return path


def delete_model(session: Session, *, owner: str, model_id: str, artifact_dir: Path) -> None:
    """Delete the row, then the files: no row ever points at a half-deleted folder.

    Conflict while an unfinished job starts from it (`"source": "model"`), as for
    datasets and checkpoints: that job would fail when it reads the weights.
    """
    owned.delete_unused(
        session,
        TrainedModel,
        owner=owner,
        id_=model_id,
        what="model",
        used_as="is the starting point of",
        files=lambda row: folder_of(row, artifact_dir),
    )
