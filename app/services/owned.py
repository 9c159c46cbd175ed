"""Rows scoped to an owner, shared by jobs, datasets, checkpoints and models: find one,
list a page, record one with its files, and delete one that no unfinished job uses.

Another owner's row answers exactly like a missing one (404, never 403): the query
filters on the owner, so it cannot tell them apart either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.core import job_states
from app.core.artifacts import ArtifactStoreError, artifact_store, available
from app.models import Checkpoint, Dataset, Job, TrainedModel
from app.models.base import storable
from app.services.errors import ConflictError, NotFoundError, UnavailableError
from app.services.paging import next_token, paginate

log = logging.getLogger(__name__)

Row = TypeVar("Row")


def find_owned(
    session: Session,
    model: type[Row],
    *,
    owner: str,
    id_: str | None,
    lock: Literal["update", "share"] | None = None,
) -> Row | None:
    """The owner's `model` row with id `id_`, or None.

    `lock` (Postgres; SQLite ignores it, its write transactions being serial already):
    "update" for a delete, which holds the row while it looks for unfinished jobs that use
    it; "share" for a submission naming the row, held until its job is stored. Either
    waits for the other, so no queued job is left pointing at a deleted row.
    """
    if id_ is None or not storable(id_):
        return None
    query = select(model).where(model.id == id_, model.owner == owner)  # type: ignore[attr-defined]
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    return session.execute(query).scalar_one_or_none()


def get_owned(
    session: Session, model: type[Row], *, owner: str, id_: str, what: str, lock: bool = False
) -> Row:
    """The owner's `model` row with id `id_`, or NotFoundError naming `what`; `lock` takes
    it `FOR UPDATE` (see `find_owned`)."""
    row = find_owned(session, model, owner=owner, id_=id_, lock="update" if lock else None)
    if row is None:
        if not storable(id_):
            raise NotFoundError(what, repr(id_))
        raise NotFoundError(what, id_, hint=what_it_is(session, owner=owner, id_=id_, besides=what))
    return row


def what_it_is(session: Session, *, owner: str, id_: str, besides: str) -> str | None:
    """What the owner's id names when it is not a `besides`: "this is a job id; its model
    is ..." for a job id sent where a model id goes (and so on), or None."""
    if besides != "job":
        # The job's model id is chosen when the job is claimed; the model exists only
        # once the job succeeds (and until it is deleted), so ask for both at once.
        job = session.execute(
            select(Job.state, TrainedModel.id)
            .outerjoin(TrainedModel, TrainedModel.id == Job.model_id)
            .where(Job.id == id_, Job.owner == owner)
        ).first()
        if job is not None:
            return f"this is a job id; {_job_model_hint(job[0], job[1])}"
    if besides != "model":
        made_by = session.execute(
            select(TrainedModel.job_id).where(TrainedModel.id == id_, TrainedModel.owner == owner)
        ).first()
        if made_by is not None:
            return f"this is a model id (of job {made_by[0]})"
    for table, name in ((Dataset, "dataset"), (Checkpoint, "checkpoint")):
        if besides != name and find_owned(session, table, owner=owner, id_=id_) is not None:
            return f"this is a {name} id"
    return None


def _job_model_hint(state: str, model_id: str | None) -> str:
    if model_id is not None:
        return f"its model is {model_id}"
    if state == job_states.JobState.SUCCEEDED:
        return "its model was deleted"
    if state in job_states.FINISHED:
        return f"it ended {state} without a model"
    return f"it has no model yet ({state})"


def list_owned(
    session: Session,
    model: type[Row],
    *,
    owner: str,
    page_size: int,
    page_token: str | None,
    where: tuple[ColumnElement[bool], ...] = (),
) -> tuple[list[Row], str | None]:
    """One page of the owner's rows, newest first, and the next page's token."""
    stmt: Any = select(model).where(model.owner == owner, *where)  # type: ignore[attr-defined]
    rows = list(
        session.execute(paginate(stmt, model, page_size=page_size, page_token=page_token)).scalars()
    )
    return next_token(rows, page_size)


def record_with_files(session: Session, row: Any, *, files: Path) -> None:
    """Commit a new row whose files already lie in place (and copy them to the shared
    artifact store, if there is one, first). The row is the only way to find them: if
    the commit fails, the files go too, rather than stay as orphans."""
    store = artifact_store()
    try:
        with available(UnavailableError):
            store.push(files)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        try:
            store.remove(files)
        except ArtifactStoreError:
            log.exception("an upload's files could not be removed from the artifact store")
        raise


def delete_unused(
    session: Session,
    model: type[Row],
    *,
    owner: str,
    id_: str,
    what: str,
    used_as: str,
    files: Callable[[Row], Path],
) -> None:
    """Delete the owner's dataset, checkpoint or model `id_`, then its files.

    ConflictError while an unfinished job reads it (`used_as` says how: "is used by"),
    as that job would fail when it came to read it. The row goes first and the files
    after the commit, so no row ever points at half-deleted files; `files(row)` is
    where they are (a file or a folder, located while the row is at hand).
    """
    row = get_owned(session, model, owner=owner, id_=id_, what=what, lock=True)
    users = job_states.unfinished_jobs_using(session, owner=owner, kind=what, ref_id=id_)
    if users:
        session.rollback()
        raise ConflictError(
            f"{what} {id_} {used_as} unfinished job(s) {', '.join(users[:5])}; "
            f"cancel them or wait for them to finish first"
        )
    path = files(row)
    session.delete(row)
    session.commit()
    try:
        artifact_store().remove(path)
    except Exception:
        # The row is gone, so nothing points at what is left: garbage, not corruption.
        log.exception("%s %s deleted, but its files could not be removed", what, id_)
    log.info("%s %s deleted by %s", what, id_, owner)
