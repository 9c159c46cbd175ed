"""Progress, metric and log events from a running job, batched to spare the database.

Progress is written at most every `progress_interval_seconds` (and at stage ends), never
once a step; metrics (one per epoch) and logs are written as they come. Each write is
fenced on the worker's lease (app.core.job_states.record): a write that finds the job
gone sets `lease_lost`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine

from app.core import job_states
from worker.control import JobControl
from worker.train import Progress

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        engine: Engine,
        *,
        job_id: str,
        worker_id: str,
        control: JobControl,
        interval_seconds: float,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.worker_id = worker_id
        self.control = control
        self.interval = interval_seconds
        self._last_write = 0.0
        self.latest_metrics: dict[str, Any] = {}

    def _write(self, values: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
        if not job_states.record(self.engine, self.job_id, self.worker_id, values, events):
            self.control.lease_lost.set()

    def stage(self, name: str, *, epochs: int, description: str = "") -> None:
        """A stage begins: its name goes on the job, and a progress event says so."""
        progress = {
            "stage": name,
            "epoch": 0,
            "epochs": epochs,
            "fraction": 0.0,
            "eta_seconds": None,
        }
        event = {**progress, "message": description or f"stage {name} started"}
        self._write({"stage": name, "progress": progress}, [("progress", event)])
        self._last_write = time.monotonic()

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last_write < self.interval and progress.step < progress.steps:
            return
        self._last_write = now
        values = {
            "stage": progress.stage,
            "epoch": progress.epoch,
            "epochs": progress.epochs,
            "step": progress.step,
            "steps": progress.steps,
            "fraction": round(progress.step / max(1, progress.steps), 4),
            "eta_seconds": None if progress.eta_seconds is None else round(progress.eta_seconds, 1),
            "loss": round(progress.loss(), 5),
        }
        self._write({"stage": progress.stage, "progress": values}, [("progress", values)])

    def metric(self, *, stage: str, epoch: int, values: dict[str, float]) -> None:
        self.latest_metrics = {"stage": stage, "epoch": epoch, **values}
        self._write({"metrics": self.latest_metrics}, [("metric", self.latest_metrics)])

    def log(self, message: str, *, level: str = "info", **fields: Any) -> None:
        log.info("job %s: %s", self.job_id, message)
        self._write({}, [("log", {"level": level, "message": message, **fields})])
