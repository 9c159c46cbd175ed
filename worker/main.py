"""`stillhouse worker`: claim a job, run it with a heartbeat beside it, repeat.

One job at a time per worker process. SIGTERM (or Ctrl-C) stops the running job at its
next training step and gives it back to the queue, where it resumes from its last
checkpoint; a second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from types import FrameType
from typing import Any

import torch
from sqlalchemy import Engine

from app.config import Settings, get_settings
from app.core import job_states
from app.core.artifacts import ArtifactStoreError, artifact_store
from app.core.datasets import DatasetUnavailableError
from app.core.devices import serving_device, training_device
from app.core.registry import UnknownNameError
from app.db import get_write_engine
from app.logging_setup import configure_logging
from app.models import JobState
from app.schemas.job_spec import parse_spec
from worker.checkpoints import CheckpointStore
from worker.context import JobContext, JobFailedError, JobOutcome
from worker.control import JobCancelled, JobControl, LeaseLost, WorkerShutdown
from worker.events import Reporter
from worker.job_kinds import run_job_kind
from worker.lookups import Lookups, MissingResourceError
from worker.presence import Presence
from worker.train import TrainingDivergedError
from worker.wakeup import Wakeup

log = logging.getLogger(__name__)

# After a failed claim (the database is unreachable), wait this long before the next (seconds).
CLAIM_RETRY_SECONDS = 5.0


def model_id_for(job_id: str) -> str:
    """A job's model id, the same on every attempt: an attempt killed mid-export leaves a
    folder that the next attempt overwrites, not an orphan."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"stillhouse:job:{job_id}:model"))


class Heartbeat(threading.Thread):
    """Renews the job's lease and watches for cancel, beside the training thread."""

    def __init__(
        self, engine: Engine, job_id: str, worker_id: str, control: JobControl, settings: Settings
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.engine, self.job_id, self.worker_id = engine, job_id, worker_id
        self.control, self.settings = control, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        last_write = time.monotonic()
        while not self.stopped.wait(self.settings.cancel_poll_seconds):
            write = time.monotonic() - last_write >= self.settings.heartbeat_seconds
            try:
                status = job_states.heartbeat(self.engine, self.job_id, self.worker_id, write=write)
            except Exception:
                # A database hiccup: try again next tick; the stale window is much longer.
                log.exception("heartbeat for job %s failed", self.job_id)
                continue
            if write:
                last_write = time.monotonic()
            if not status.owned:
                self.control.lease_lost.set()
                return
            if status.cancel_requested:
                self.control.cancelled.set()


class Worker:
    def __init__(self, settings: Settings, *, device: str | None = None) -> None:
        self.settings = settings
        self.engine = get_write_engine()
        self.device = training_device(device or settings.device)
        self.serving_device = serving_device(settings.serving_device)
        # This machine's artifact directory and the shared store behind it, if any.
        self.artifacts = artifact_store(settings.artifact_dir)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        # Idle waits end early when Postgres announces a queued job (worker/wakeup.py).
        self.wakeup = Wakeup(settings, self.stopping)
        # This worker's row at GET /api/v1/workers (worker/presence.py).
        self.presence = Presence(self.engine, settings, self.worker_id, self.device)
        self.current: JobControl | None = None
        self._last_sweep = 0.0

    # -- signals
    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stopping.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)
            log.info("signal %d: finishing the current step, then stopping", signum)
            self.stopping.set()
            self.wakeup.wake()
            if self.current is not None:
                self.current.shutdown.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- main loop
    def run(self, *, max_jobs: int | None = None) -> None:
        torch.set_num_threads(self.settings.torch_threads())
        log.info(
            "worker %s on %s with %d threads, polling every %.2fs (%s)",
            self.worker_id,
            self.device,
            torch.get_num_threads(),
            self.settings.poll_seconds,
            self.wakeup.mode,
        )
        try:
            self.presence.start()
        except Exception:
            # Not fatal: jobs run without it; the API just does not list this worker.
            log.exception("could not register this worker in the workers table")
        try:
            self._loop(max_jobs)
        finally:
            self.presence.stop()
            self.wakeup.close()
        log.info("worker %s stopped", self.worker_id)

    def _loop(self, max_jobs: int | None) -> None:
        done = 0
        while not self.stopping.is_set():
            self.maybe_sweep()
            try:
                job = job_states.claim_next(
                    self.engine,
                    self.worker_id,
                    gpus=int(self.presence.figures["gpus"]),
                    labels=self.settings.labels(),
                )
            except Exception:
                # The database is away (restart, failover): wait and retry rather than exit.
                log.exception("claiming a job failed; retrying in %.0fs", CLAIM_RETRY_SECONDS)
                self.stopping.wait(max(self.settings.poll_seconds, CLAIM_RETRY_SECONDS))
                continue
            if job is None:
                self.wakeup.wait(self.settings.poll_seconds)
                continue
            try:
                self.run_job(job)
            except Exception:
                # Recording the outcome failed (the database went away at the very end, say).
                # The job keeps its stale lease, so a sweep requeues it; this worker lives on
                # rather than leaving the queue without anyone to run it.
                log.exception("job %s: recording its outcome failed", job.id)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break

    def maybe_sweep(self) -> None:
        # Every worker sweeps now and then; the sweep is one cheap indexed query.
        now = time.monotonic()
        if now - self._last_sweep < min(self.settings.heartbeat_seconds, 5.0):
            return
        self._last_sweep = now
        try:
            job_states.requeue_stale(self.engine, self.settings.stale_after_seconds)
        except Exception:
            log.exception("stale sweep failed")

    def run_job(self, job: job_states.ClaimedJob) -> None:
        control = JobControl()
        # Published before the check: a signal arriving in between still reaches the job.
        self.current = control
        if self.stopping.is_set():
            control.shutdown.set()
        heartbeat = Heartbeat(self.engine, job.id, self.worker_id, control, self.settings)
        heartbeat.start()
        self.presence.set_job(job.id)
        reporter = Reporter(
            self.engine,
            job_id=job.id,
            worker_id=self.worker_id,
            control=control,
            interval_seconds=self.settings.progress_interval_seconds,
        )
        job_dir = self.settings.artifact_dir / "jobs" / job.id
        ctx = JobContext(
            job_id=job.id,
            owner=job.owner,
            name=job.spec.get("name"),
            settings=self.settings,
            device=self.device,
            serving_device=self.serving_device,
            control=control,
            reporter=reporter,
            store=CheckpointStore(job_dir / "checkpoints", self.artifacts),
            lookups=Lookups(self.engine, job.owner, self.settings.artifact_dir),
        )
        try:
            # Another machine may have run (and checkpointed) this job since this one did.
            self.artifacts.refresh(job_dir / "checkpoints")
            spec = parse_spec(job.spec)
            ctx.processes = spec.resources.world_size()
            outcome = run_job_kind(ctx, spec, model_id=model_id_for(job.id))
            self._succeed(job, outcome, control)
        except JobCancelled:
            job_states.finish(self.engine, job.id, self.worker_id, state=JobState.CANCELLED)
        except WorkerShutdown:
            job_states.release(self.engine, job.id, self.worker_id)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
        except JobFailedError as exc:
            self._fail(job, exc.code, str(exc))
        except TrainingDivergedError as exc:
            self._fail(job, "diverged", str(exc))
        except (
            DatasetUnavailableError,
            MissingResourceError,
            UnknownNameError,
            ArtifactStoreError,  # the shared store did not answer
        ) as exc:
            self._fail(job, "unavailable", str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            detail = "".join(traceback.format_exception_only(exc)).strip()
            self._fail(job, "internal", f"{detail} (see the worker's log for the traceback)")
        finally:
            heartbeat.stopped.set()
            heartbeat.join(timeout=5)
            self.presence.set_job(None)
            self.current = None

    def _fail(self, job: job_states.ClaimedJob, code: str, message: str) -> None:
        job_states.fail(self.engine, job.id, self.worker_id, code=code, message=message)

    def _succeed(
        self, job: job_states.ClaimedJob, outcome: JobOutcome, control: JobControl
    ) -> None:
        """Register the model and mark the job SUCCEEDED in one transaction; a job that
        is no longer ours (being cancelled, or swept) leaves no model behind."""
        values = {
            "metrics": outcome.metrics,
            "report": outcome.report,
            "progress": {"stage": "done", "fraction": 1.0, "eta_seconds": 0.0},
        }
        model = outcome.model
        row: dict[str, Any] | None = None
        if model is not None:
            row = {
                "id": model.model_id,
                "owner": job.owner,
                "name": job.spec.get("name"),
                "job_id": job.id,
                "arch": model.meta["arch"],
                "meta": model.meta,
                "params": model.params,
                "size_bytes": model.size_bytes,
                "artifact_path": str(model.folder.relative_to(self.settings.artifact_dir)),
            }
        try:
            if model is not None:
                # In the shared store before the row that points at it.
                self.artifacts.push(model.folder)
            ok = job_states.succeed(self.engine, job.id, self.worker_id, values=values, model=row)
        except Exception:
            # Nothing was recorded, so no row will ever point at the model's folder.
            if model is not None:
                self.artifacts.remove(model.folder)
            raise
        if ok:
            return
        if model is not None:
            self.artifacts.remove(model.folder)
        if not control.lease_lost.is_set():
            job_states.finish(self.engine, job.id, self.worker_id, state=JobState.CANCELLED)


def main(device: str | None = None) -> None:
    """`stillhouse worker` (which starts `python -m worker`)."""
    settings = get_settings()
    worker = Worker(settings, device=device)
    worker.install_signal_handlers()
    worker.run()


def cli(argv: list[str] | None = None) -> int:
    """`python -m worker [--device auto|cpu|cuda]`: one worker, until SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_level)
    main(device=args.device)
    return 0
