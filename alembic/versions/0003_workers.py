"""workers: each running worker and what it can run; jobs: the resources they need

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres, JSON text on SQLite (as app.models.base.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    # Jobs stored before this revision need nothing in particular: 0 GPUs, no labels.
    # Plain ADD COLUMN, not a batch: on SQLite a batch copies the table and drops the old
    # one, and job_inputs' ON DELETE CASCADE would empty job_inputs with it.
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "jobs",
        sa.Column("labels", sa.String(length=1200), server_default=sa.text("''"), nullable=False),
    )


def downgrade() -> None:
    # DROP COLUMN in place (SQLite 3.35+ and Postgres), for the reason above.
    op.execute("ALTER TABLE jobs DROP COLUMN labels")
    op.execute("ALTER TABLE jobs DROP COLUMN gpus")
    op.drop_table("workers")
