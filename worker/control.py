"""How a running job learns that it must stop: cancel, shutdown, or a lost lease.

The heartbeat thread sets these flags; the training loop calls `check()` once a step,
which costs one attribute read, and raises where the job must stop.
"""

from __future__ import annotations

import threading


class JobInterrupted(Exception):
    """Base of the ways a running job stops before its end."""


class JobCancelled(JobInterrupted):
    """The user cancelled the job."""


class WorkerShutdown(JobInterrupted):
    """The worker got SIGTERM: the job goes back to the queue and resumes elsewhere."""


class LeaseLost(JobInterrupted):
    """Another worker owns the job now (our heartbeat went stale); write nothing more."""


class StopRequested(JobInterrupted):
    """A data-parallel rank stops because the worker asked every rank to (worker/parallel.py);
    the worker's own control says why."""


class JobControl:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.shutdown = threading.Event()
        self.lease_lost = threading.Event()

    def check(self) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost("the job's lease was lost to another worker")
        if self.cancelled.is_set():
            raise JobCancelled("cancelled by the user")
        if self.shutdown.is_set():
            raise WorkerShutdown("the worker is shutting down")
