"""Who may predict with which model: the caller's key checked and the model looked up,
in one short session, remembered for a few seconds (app/serving/lookup.py).

Prediction routes are async and wait on the batcher; a request-long session would hold
a pooled connection all that time, and a burst of concurrent predictions would exhaust
the pool. So the key and the model row are read here, in a thread, with a session that
is closed before the prediction waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from app.core.artifacts import artifact_store, available
from app.core.model_format import StoredModel
from app.db import get_sessionmaker
from app.models import TrainedModel
from app.services import models as models_service
from app.services.errors import UnavailableError
from app.services.keys import owner_for_authorization
from app.serving.lookup import LookupCache


def model_ref(row: TrainedModel, artifact_dir: Path) -> StoredModel:
    """What serving needs of a model's row: its id, artifact folder and model.json. The
    folder is fetched from the shared artifact store the first time this machine needs
    it (a blocking download: call it in a thread, as every caller does)."""
    folder = models_service.folder_of(row, artifact_dir)
    with available(UnavailableError):
        artifact_store(artifact_dir).pull(folder)
    return StoredModel(row.id, folder, row.meta)


def lookup(authorization: str, *, model_id: str, artifact_dir: Path) -> tuple[str, StoredModel]:
    """(owner, model) for a prediction; UnauthorizedError or NotFoundError otherwise."""
    with get_sessionmaker()() as session:
        owner = owner_for_authorization(session, authorization)
        row = models_service.get_owned(session, owner, model_id)
        return owner, model_ref(row, artifact_dir)


async def authorized_ref(
    lookups: LookupCache,
    authorization: str,
    *,
    model_id: str,
    artifact_dir: Path,
    on_deleted: Callable[[str], None] | None = None,
) -> tuple[str, StoredModel]:
    """`lookup`, answered from `lookups` when this key was allowed this model moments ago.

    A remembered model whose artifact folder is gone was deleted through another process
    on the same store (another `--workers` process, or a replica): it is forgotten
    (`on_deleted(model_id)`) and looked up afresh, which answers 404. The folder check is
    one stat per prediction; it makes a delete take effect at once across processes.

    Concurrent misses for one (key, model) share one lookup: when an entry expires under
    load, every request in flight for it misses at once, and 64 queries in the thread
    pool (each opening a connection) stalled them all for tens of milliseconds.
    """
    hit = lookups.get(authorization, model_id)
    if hit is not None:
        if hit[1].folder.is_dir():
            return hit
        lookups.forget_model(model_id)
        if on_deleted is not None:
            on_deleted(model_id)
    key = lookups.key(authorization, model_id)
    pending = lookups.pending.get(key)
    if pending is None:
        pending = asyncio.ensure_future(
            run_in_threadpool(lookup, authorization, model_id=model_id, artifact_dir=artifact_dir)
        )
        lookups.pending[key] = pending
        pending.add_done_callback(lambda _: lookups.pending.pop(key, None))
    # shield: a caller that goes away must not cancel the lookup its mates wait for.
    owner, ref = await asyncio.shield(pending)
    lookups.put(authorization, model_id, owner, ref)
    return owner, ref
