"""Dependencies as `Annotated` aliases: sessions, settings, and the caller's owner."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_db, get_write_db
from app.services.keys import owner_for_authorization

SessionDep = Annotated[Session, Depends(get_db)]
# For requests that read then write: on SQLite its transaction takes the write lock up front.
WriteSessionDep = Annotated[Session, Depends(get_write_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_owner(request: Request, session: SessionDep) -> str:
    """The owner of the request's Bearer key; 401 without a valid one."""
    return owner_for_authorization(session, request.headers.get("authorization", ""))


OwnerDep = Annotated[str, Depends(get_owner)]
