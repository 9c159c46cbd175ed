"""Dependencies as `Annotated` aliases: sessions, settings, and the caller's owner."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_db, get_write_db
from app.services.keys import owner_for_authorization
from app.services.paging import MAX_PAGE_SIZE

SessionDep = Annotated[Session, Depends(get_db)]
# For requests that read then write: on SQLite its transaction takes the write lock up front.
WriteSessionDep = Annotated[Session, Depends(get_write_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# The API key scheme, as OpenAPI shows it ("Authorize" in /docs). The header is read by
# `owner_for_authorization`, which words the 401s; this declares it for the docs.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key: `stillhouse keys create --owner NAME` prints one.",
)
# For routes that check the key themselves (the prediction routes, off the dependency path).
BEARER_SECURITY: dict[str, list[dict[str, list[str]]]] = {"security": [{"bearer": []}]}


def get_owner(
    request: Request,
    session: SessionDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> str:
    """The owner of the request's Bearer key; 401 without a valid one."""
    return owner_for_authorization(session, request.headers.get("authorization", ""))


OwnerDep = Annotated[str, Depends(get_owner)]


# Paging of every list: `?page_size=` and the opaque `?page_token=` of the previous page.
PageSize = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page (newest first).")
]
PageToken = Annotated[
    str | None,
    Query(
        description="The `next_page_token` of the previous page; opaque (only tokens this "
        "service issued are accepted)."
    ),
]
