"""What a job reads that its owner can delete: an uploaded dataset, a checkpoint or a model.

Written with the job, from its spec. Deleting a dataset, checkpoint or model asks this
table, by index, for the unfinished jobs that use it (409 while any does), instead of
reading every spec.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class JobInput(Base):
    __tablename__ = "job_inputs"
    __table_args__ = (Index("ix_job_inputs_kind_ref_id", "kind", "ref_id"),)

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    # "dataset", "checkpoint" or "model".
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    # The id of the dataset, checkpoint or model row (checked to exist at submission).
    ref_id: Mapped[str] = mapped_column(String(36), primary_key=True)
