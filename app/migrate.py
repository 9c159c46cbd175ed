"""`stillhouse migrate`: bring the configured database to the newest schema."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.config import Config

from alembic import command
from app.config import get_settings

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"

log = logging.getLogger(__name__)


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser interpolation would eat a literal % in a password.
    url = database_url or get_settings().database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_head(database_url: str | None = None) -> None:
    """`alembic upgrade head` on the configured (or given) database."""
    url = database_url or get_settings().database_url
    _ensure_sqlite_parent(url)
    command.upgrade(alembic_config(url), "head")
    log.info("database is at the newest schema")


def _ensure_sqlite_parent(url: str) -> None:
    # sqlite:///./x/y.db fails with "unable to open database file" when x/ does not exist.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.endswith(":memory:"):
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
