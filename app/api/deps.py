"""Dependencies as `Annotated` aliases: sessions, settings, and the caller's owner."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.api.errors import ProblemError
from app.config import Settings, get_settings
from app.db import get_db, get_write_db
from app.services.keys import owner_for_key

SessionDep = Annotated[Session, Depends(get_db)]
# For requests that read then write: on SQLite its transaction takes the write lock up front.
WriteSessionDep = Annotated[Session, Depends(get_write_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_owner(request: Request, session: SessionDep) -> str:
    """The owner of the request's Bearer key; 401 without a valid one."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ProblemError(
            401,
            "missing API key: send Authorization: Bearer <key> (stillhouse keys create)",
            headers={"WWW-Authenticate": "Bearer"},
            type_="unauthorized",
        )
    owner = owner_for_key(session, key.strip())
    if owner is None:
        raise ProblemError(
            401, "invalid API key", headers={"WWW-Authenticate": "Bearer"}, type_="unauthorized"
        )
    request.state.owner = owner
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
