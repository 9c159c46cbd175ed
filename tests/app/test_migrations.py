"""Migrations are the only way the schema changes: they must match the ORM and run both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from alembic import command
from app.db import make_engine
from app.migrate import alembic_config, upgrade_head
from app.models import Base
from tests.conftest import _postgres_database

TABLES = {"jobs", "job_events", "job_inputs", "models", "api_keys", "datasets", "checkpoints"}


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


def test_job_inputs_are_backfilled_from_the_stored_specs(scratch_url):
    """Jobs stored before 0002 get their inputs from their specs, once, on upgrade."""
    config = alembic_config(scratch_url)
    command.upgrade(config, "0001")
    spec = {
        "kind": "pipeline",
        "teacher": {"source": "checkpoint", "checkpoint_id": "ckpt-1"},
        "student": {"candidates": [{"source": "model", "model_id": "model-1"}, {"arch": "x"}]},
        "distill": {"dataset": {"id": "data-1", "split": "train"}},
        "finetune": {"dataset": {"name": "digits", "id": None}},
    }
    engine = make_engine(scratch_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, owner, kind, state, spec, attempts, max_attempts, "
                    "cancel_requested, created_at, updated_at) VALUES ('job-1', 'alice', "
                    "'pipeline', 'QUEUED', :spec, 0, 3, false, :now, :now)"
                ),
                {"spec": json.dumps(spec), "now": "2026-01-01 00:00:00"},
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, kind, ref_id FROM job_inputs")).all()
    finally:
        engine.dispose()
    assert sorted(tuple(r) for r in rows) == [
        ("job-1", "checkpoint", "ckpt-1"),
        ("job-1", "dataset", "data-1"),
        ("job-1", "model", "model-1"),
    ]
