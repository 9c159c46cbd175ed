"""API keys: created by `stillhouse keys create`, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey
from app.services.errors import UnauthorizedError

KEY_PREFIX = "sh_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, owner: str) -> str:
    """A new key for `owner`; the key itself is returned once and never stored."""
    if not owner or len(owner) > 200:
        raise ValueError("owner must be 1 to 200 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:10]))
    session.commit()
    return key


def owner_for_key(session: Session, key: str) -> str | None:
    row = session.execute(
        select(ApiKey.owner).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else row[0]


def owner_for_authorization(session: Session, header: str) -> str:
    """The owner of an `Authorization: Bearer <key>` header; UnauthorizedError without a
    valid key."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise UnauthorizedError(
            "missing API key: send Authorization: Bearer <key> (stillhouse keys create)"
        )
    owner = owner_for_key(session, key.strip())
    if owner is None:
        raise UnauthorizedError("invalid API key")
    return owner
