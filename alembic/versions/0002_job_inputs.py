"""job inputs: which dataset, checkpoint or model each job reads

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_inputs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("ref_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_inputs_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "kind", "ref_id", name=op.f("pk_job_inputs")),
    )
    with op.batch_alter_table("job_inputs", schema=None) as batch_op:
        batch_op.create_index("ix_job_inputs_kind_ref_id", ["kind", "ref_id"], unique=False)
    _backfill()


def _backfill() -> None:
    """Inputs of the jobs stored before this table existed, read from their specs once.

    In a stored spec (defaults filled in) a dataset is named by `id`, a checkpoint by
    `checkpoint_id`, a model by `model_id`; nothing else uses those keys.
    """
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    inputs = sa.table(
        "job_inputs",
        sa.column("job_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("ref_id", sa.String),
    )
    rows = []
    for job_id, spec in conn.execute(sa.select(jobs.c.id, jobs.c.spec)):
        found: set[tuple[str, str]] = set()
        _walk(spec, found)
        rows += [{"job_id": job_id, "kind": k, "ref_id": r} for k, r in sorted(found)]
    if rows:
        conn.execute(sa.insert(inputs), rows)


def _walk(node: Any, found: set[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for key, kind in (
            ("id", "dataset"),
            ("checkpoint_id", "checkpoint"),
            ("model_id", "model"),
        ):
            if isinstance(node.get(key), str):
                found.add((kind, node[key]))
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def downgrade() -> None:
    with op.batch_alter_table("job_inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_job_inputs_kind_ref_id")
    op.drop_table("job_inputs")
