"""Reads scoped to an owner, shared by jobs, datasets, checkpoints and models.

Another owner's row answers exactly like a missing one (404, never 403): the query
filters on the owner, so it cannot tell them apart either.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.api.errors import not_found
from app.models.base import storable
from app.services.paging import next_token, paginate

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
    """The owner's `model` row with id `id_`, or a 404 naming `what`; `lock` takes it
    `FOR UPDATE` (see `find_owned`)."""
    if not storable(id_):
        raise not_found(what, repr(id_))
    row = find_owned(session, model, owner=owner, id_=id_, lock="update" if lock else None)
    if row is None:
        raise not_found(what, id_)
    return row


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
