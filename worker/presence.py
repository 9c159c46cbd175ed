"""This worker's row in the workers table (`GET /api/v1/workers`): what it can run and
whether it is alive.

Written when the worker starts, renewed every STILLHOUSE_HEARTBEAT_SECONDS by a thread
of its own (so a worker busy in a long step still shows), with the job it runs; removed
when it stops cleanly. A worker that dies leaves a row whose `last_seen` grows old: the
API shows only rows seen within STILLHOUSE_STALE_AFTER_SECONDS, and every worker's beat
deletes rows older than ten times that.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

import torch
from sqlalchemy import Engine, delete, insert, update

from app.config import Settings
from app.models import WorkerRecord
from app.models.base import utcnow
from worker.ray_train import cluster_gpus

log = logging.getLogger(__name__)

# Rows unseen for this many stale periods are deleted (a crashed worker's, say).
FORGET_AFTER_STALE_PERIODS = 10


def capabilities(device: torch.device, labels: list[str]) -> dict[str, Any]:
    """What this worker can run: its device kind, GPUs, the first GPU's memory, labels."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    memory = torch.cuda.get_device_properties(0).total_memory if gpus else 0
    return {"device": device.type, "gpus": gpus, "gpu_memory_bytes": memory, "labels": labels}


class Presence:
    def __init__(
        self, engine: Engine, settings: Settings, worker_id: str, device: torch.device
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id
        self.figures = capabilities(device, settings.labels())
        if settings.ray_address and device.type == "cuda":
            # Its GPU jobs may train on the cluster's GPUs (worker/ray_train.py): it may
            # claim jobs that ask for as many.
            self.figures["gpus"] = max(self.figures["gpus"], cluster_gpus(settings.ray_address))
        self.job_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(WorkerRecord).values(
                    id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    last_seen=now,
                    job_id=None,
                    **self.figures,
                )
            )
        self._thread = threading.Thread(target=self._beat, name="presence", daemon=True)
        self._thread.start()

    def set_job(self, job_id: str | None) -> None:
        """The job this worker runs now (None: idle), shown at once."""
        self.job_id = job_id
        self._write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(WorkerRecord).where(WorkerRecord.id == self.worker_id))
        except Exception:
            log.exception("could not remove this worker's row; it ages out instead")

    def _write(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(WorkerRecord)
                    .where(WorkerRecord.id == self.worker_id)
                    .values(last_seen=utcnow(), job_id=self.job_id)
                )
        except Exception as exc:
            # The database is away for a moment: the next beat tries again.
            log.warning("worker presence not renewed (%s)", exc)

    def _beat(self) -> None:
        forget = timedelta(seconds=FORGET_AFTER_STALE_PERIODS * self.settings.stale_after_seconds)
        while not self._stop.wait(self.settings.heartbeat_seconds):
            self._write()
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        delete(WorkerRecord).where(WorkerRecord.last_seen < utcnow() - forget)
                    )
            except Exception as exc:
                log.warning("old worker rows not swept (%s)", exc)
