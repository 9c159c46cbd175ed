"""API keys: created by `stillhouse keys create`, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.models import ApiKey
from app.models.base import utcnow
from app.services.errors import InvalidError, NotFoundError, UnauthorizedError, field_error

KEY_PREFIX = "sh_"
# Characters of a key kept in the clear (`ApiKey.prefix`), to tell keys apart in listings.
PREFIX_LENGTH = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, owner: str) -> str:
    """A new key for `owner`; the key itself is returned once and never stored."""
    if not owner or len(owner) > 200:
        raise ValueError("owner must be 1 to 200 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:PREFIX_LENGTH]))
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


def list_keys(session: Session, *, owner: str | None = None) -> list[ApiKey]:
    """Every key (or `owner`'s), newest first, revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def revoke_key(session: Session, prefix: str) -> tuple[ApiKey, bool]:
    """Revoke the one key whose listed prefix is `prefix` (or whose whole key it is).

    Returns the key, and whether this call revoked it (False: it already was). No match
    is a NotFoundError and several an InvalidError naming them, never a silent no-op:
    a key meant to be revoked must not stay live by a typo. Once revoked, ordinary routes
    refuse the key at once (`owner_for_key` reads the database on every request);
    prediction routes remember an allowed key for STILLHOUSE_SERVING_LOOKUP_TTL_SECONDS.
    """
    given = prefix.strip()
    # Echo at most a prefix's length: a whole key pasted here must not land in a log.
    shown = given if len(given) <= PREFIX_LENGTH else given[:PREFIX_LENGTH] + "..."
    matches = list(
        session.scalars(
            select(ApiKey).where(or_(ApiKey.prefix == given, ApiKey.key_hash == hash_key(given)))
        )
    )
    if not matches:
        raise NotFoundError(
            "key",
            shown,
            f"no key has the prefix {shown!r} (stillhouse keys list shows each key's prefix)",
        )
    if len(matches) > 1:
        owners = ", ".join(sorted({k.owner for k in matches}))
        raise InvalidError(
            [field_error("prefix", f"{len(matches)} keys have it (owners: {owners})")],
            detail=f"{len(matches)} keys have the prefix {shown!r} (owners: {owners}); "
            "pass the whole key to revoke one of them",
        )
    key = matches[0]
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    session.refresh(key)
    return key, revoked.rowcount == 1
