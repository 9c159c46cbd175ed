"""/api/v1/workers: the live workers (worker/presence.py writes their rows)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.responses import example, problems
from app.schemas.worker import WorkerList, WorkerOut
from app.services import examples
from app.services.workers import live_workers

router = APIRouter(prefix="/api/v1/workers", tags=["operations"])


@router.get(
    "",
    response_model=WorkerList,
    responses={**problems(401, what="worker"), **example(200, examples.WORKER_LIST)},
    summary="List the live workers and what each can run",
    description="Answers every worker whose heartbeat is younger than "
    "STILLHOUSE_STALE_AFTER_SECONDS, oldest first: its device, GPUs and the first GPU's "
    "memory, labels, when it started and was last seen, and the job it runs (any "
    "owner's job id; workers are shared). A worker stopped cleanly is gone at once; one "
    "that died drops out after the stale period. Any key may read it.",
)
def list_workers(_owner: OwnerDep, session: SessionDep, settings: SettingsDep) -> WorkerList:
    rows = live_workers(session, settings.stale_after_seconds)
    return WorkerList(workers=[WorkerOut.model_validate(row, from_attributes=True) for row in rows])
