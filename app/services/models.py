"""Finished models: list, get, delete (row, artifacts), artifact files, serving refs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.api.deps import get_owner
from app.api.errors import ProblemError, not_found
from app.db import get_sessionmaker
from app.models import TrainedModel
from app.schemas.model import ModelOut
from app.services import owned
from app.services.datasets import unfinished_jobs_using
from app.serving.backends import ModelRef
from app.serving.server import ModelServer

log = logging.getLogger(__name__)

# Downloadable artifacts and their media types.
ARTIFACTS = {
    "model.safetensors": "application/octet-stream",
    "model.json": "application/json",
    "model.onnx": "application/octet-stream",
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


def model_folder(row: TrainedModel, artifact_dir: Path) -> Path:
    """The model's artifact folder, which must lie inside the artifact dir."""
    root = artifact_dir.resolve()
    folder = (root / row.artifact_path).resolve()
    if folder == root or root not in folder.parents:
        raise ProblemError(500, f"model {row.id} has an artifact path outside the store")
    return folder


def model_ref(row: TrainedModel, artifact_dir: Path) -> ModelRef:
    return ModelRef(row.id, model_folder(row, artifact_dir), row.meta)


def serving_ref(request: Request, *, model_id: str, artifact_dir: Path) -> tuple[str, ModelRef]:
    """(owner, model) for a prediction: the caller's key checked and the model looked up in
    one short session, whose connection goes back to the pool before the prediction waits.

    Prediction routes are async and wait on the batcher; a request-long session (the
    usual `SessionDep`) would hold a pooled connection all that time, and a burst of
    concurrent predictions would exhaust the pool.
    """
    with get_sessionmaker()() as session:
        owner = get_owner(request, session)
        return owner, model_ref(get_owned(session, owner, model_id), artifact_dir)


async def authorized_ref(
    request: Request, server: ModelServer, *, model_id: str, artifact_dir: Path
) -> tuple[str, ModelRef]:
    """`serving_ref`, remembered for a few seconds by the server (app/serving/lookup.py)."""
    hit = server.lookups.get(request, model_id)
    if hit is not None:
        return hit
    owner, ref = await run_in_threadpool(
        serving_ref, request, model_id=model_id, artifact_dir=artifact_dir
    )
    server.lookups.put(request, model_id, owner, ref)
    return owner, ref


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
            "files": meta.get("files", ["model.safetensors", "model.json"]),
            "backends": meta.get("backends"),
            "onnx": meta.get("onnx"),
            "serving_backend": serving_backend,
            "loaded": loaded,
            "created_at": row.created_at,
        }
    )


def artifact_file(row: TrainedModel, name: str, artifact_dir: Path) -> Path:
    if name not in ARTIFACTS:
        raise ProblemError(
            404,
            f"model {row.id} has no artifact {name!r}; artifacts are {', '.join(ARTIFACTS)}",
            type_="not-found",
        )
    path = model_folder(row, artifact_dir) / name
    if not path.is_file():
        reason = ""
        if name == "model.onnx":
            reason = (row.meta.get("onnx") or {}).get("error", "")
        raise ProblemError(
            404,
            f"model {row.id} has no {name}" + (f": {reason}" if reason else ""),
            type_="not-found",
        )
    return path


def delete_model(session: Session, *, owner: str, model_id: str, artifact_dir: Path) -> None:
    """Delete the row, then the files: no row ever points at a half-deleted folder.

    409 while an unfinished job starts from it (`"source": "model"`), as for datasets and
    checkpoints: that job would fail when it reads the weights.
    """
    row = get_owned(session, owner, model_id, lock=True)
    users = unfinished_jobs_using(session, owner=owner, key="model_id", value=model_id)
    if users:
        session.rollback()
        raise ProblemError(
            409,
            f"model {model_id} is the starting point of unfinished job(s) "
            f"{', '.join(users[:5])}; cancel them or wait for them to finish first",
            type_="conflict",
        )
    folder = model_folder(row, artifact_dir)
    result = session.execute(
        delete(TrainedModel).where(TrainedModel.id == model_id, TrainedModel.owner == owner)
    )
    if result.rowcount != 1:
        session.rollback()
        raise not_found("model", model_id)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)
    log.info("model %s of %s deleted", model_id, owner)
