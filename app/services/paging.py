"""Keyset pagination with opaque page tokens: newest first, stable under inserts."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from app.models.base import storable
from app.services.errors import InvalidError, field_error

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def encode_token(created_at: datetime, id_: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": id_}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        created_at, id_ = datetime.fromisoformat(data["c"]), str(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _malformed() from exc
    # Tokens we issue carry an aware time and a stored id; anything else would fail in the
    # query (a naive time in the UTC column, a NUL in Postgres text) instead of here.
    if created_at.tzinfo is None or not storable(id_):
        raise _malformed()
    return created_at, id_


def _malformed() -> InvalidError:
    return InvalidError(
        [field_error("query.page_token", "malformed token")],
        detail="page_token is not one this service issued",
    )


def paginate(
    stmt: Select[Any], model: Any, *, page_size: int, page_token: str | None
) -> Select[Any]:
    """Order newest first and start after the token's row; fetches one extra row."""
    if page_token:
        created_at, id_ = decode_token(page_token)
        stmt = stmt.where(
            or_(
                model.created_at < created_at,
                and_(model.created_at == created_at, model.id < id_),
            )
        )
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(page_size + 1)


def next_token(rows: list[Any], page_size: int) -> tuple[list[Any], str | None]:
    if len(rows) <= page_size:
        return rows, None
    rows = rows[:page_size]
    return rows, encode_token(rows[-1].created_at, rows[-1].id)
