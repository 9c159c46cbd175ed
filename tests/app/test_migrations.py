"""Migrations are the only way the schema changes: they must match the ORM and run both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from alembic import command
from app.db import make_engine
from app.migrate import alembic_config, upgrade_head
from app.models import Base
from tests.conftest import _postgres_database

TABLES = {"jobs", "job_events", "models", "api_keys", "datasets", "checkpoints"}


@pytest.fixture(params=["sqlite", "postgres"])
def scratch_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (never the session's shared one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    yield from _postgres_database()


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(scratch_url):
    upgrade_head(scratch_url)
    assert _tables(scratch_url) >= TABLES
    # The same check as `alembic check`: autogenerate finds nothing to add or change.
    assert _drift(scratch_url) == []


def test_downgrade_to_base_and_upgrade_again(scratch_url):
    config = alembic_config(scratch_url)
    head = ScriptDirectory.from_config(config).get_current_head()
    upgrade_head(scratch_url)
    assert _revision(scratch_url) == head

    command.downgrade(config, "base")
    assert _revision(scratch_url) is None
    assert _tables(scratch_url) - {"alembic_version"} == set()

    command.upgrade(config, "head")
    assert _revision(scratch_url) == head
    assert _tables(scratch_url) >= TABLES
    assert _drift(scratch_url) == []


def test_migrations_form_one_line():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, "two heads: merge them"
    assert len(script.get_bases()) == 1
