"""Helpers shared by test modules: polling, small job specs, and readers of what a job wrote.

Not a test module (pytest collects `test_*.py` only). The spec builders return a new dict
on every call, so a test may change its copy freely.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import select

from app.db import get_write_engine, get_write_sessionmaker
from app.models import Job, JobEvent

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 20.0, on_fail: str = ""
) -> T:
    """Poll `probe` until it returns something truthy, and return that.

    After `timeout` seconds without one, fail with an AssertionError that names `what` and
    the timeout, followed by `on_fail` (logs, say) when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(f"{message}\n{on_fail}" if on_fail else message)
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- job specs
def tiny_train_spec(
    *,
    name: str = "tiny",
    classes: Sequence[int] | None = (0, 1, 2),
    samples_per_class: int | None = None,
    epochs: int = 2,
    batch_size: int = 64,
) -> dict[str, Any]:
    """A `train` job of a quarter-width small_cnn on digits: a second or two on one core.

    `classes=None` trains on all ten digits; `samples_per_class=None` keeps every sample."""
    dataset: dict[str, Any] = {"name": "digits"}
    if classes is not None:
        dataset["classes"] = list(classes)
    if samples_per_class is not None:
        dataset["samples_per_class"] = samples_per_class
    return {
        "kind": "train",
        "name": name,
        "model": {"arch": "small_cnn", "width": 0.25},
        # min_steps 0: exactly `epochs` (tests count them; the default would add more).
        "train": {"dataset": dataset, "epochs": epochs, "batch_size": batch_size, "min_steps": 0},
    }


def long_train_spec(epochs: int = 200, *, name: str = "long") -> dict[str, Any]:
    """All ten digits in batches of 16: about a third of a second per epoch on one core,
    so that with many epochs a job runs long enough to be cancelled, stopped or killed."""
    return tiny_train_spec(name=name, classes=None, epochs=epochs, batch_size=16)


def tiny_teacher_spec(*, width: float | None = None) -> dict[str, Any]:
    """A small_cnn teacher trained for two epochs on digits 0-4."""
    teacher: dict[str, Any] = {"source": "train", "arch": "small_cnn"}
    if width is not None:
        teacher["width"] = width
    teacher["train"] = {
        "dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
        "epochs": 2,
        "min_steps": 0,
    }
    return teacher


def tiny_pipeline_spec(
    *,
    name: str = "tiny-pipeline",
    teacher_width: float | None = None,
    distill_epochs: int = 2,
    finetune_samples_per_class: int = 10,
    finetune_epochs: int = 3,
    finetune_batch_size: int | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """A `pipeline` job: the tiny teacher (digits 0-4), distilled into a quarter-width
    student on unlabelled digits, fine-tuned on a few shots of digits 5-9.

    `changes` set (or replace) top-level fields, such as `strategy`, `seed` or `student`."""
    finetune: dict[str, Any] = {
        "dataset": {
            "name": "digits",
            "classes": [5, 6, 7, 8, 9],
            "samples_per_class": finetune_samples_per_class,
        },
        "epochs": finetune_epochs,
        "min_steps": 0,
    }
    if finetune_batch_size is not None:
        finetune["batch_size"] = finetune_batch_size
    spec: dict[str, Any] = {
        "kind": "pipeline",
        "name": name,
        "teacher": tiny_teacher_spec(width=teacher_width),
        "student": {"arch": "small_cnn", "width": 0.25},
        "distill": {
            "dataset": {"name": "digits", "labels": False},
            "epochs": distill_epochs,
            "min_steps": 0,
        },
        "finetune": finetune,
    }
    spec.update(copy.deepcopy(changes))
    return spec


# ------------------------------------------------------------------- what a job wrote
def job_row(job_id: str) -> Job:
    """The job's row as it is now, detached from its session."""
    with get_write_sessionmaker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def events(job_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The job's stored events, oldest first, as (id, type, data)."""
    with get_write_engine().connect() as conn:
        rows = conn.execute(
            select(JobEvent.id, JobEvent.type, JobEvent.data)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]
