"""Data-parallel training: one stage's `fit` run as N processes under torch.distributed.

A job whose `resources` ask for N > 1 processes trains each stage here; everything else
(data loading, the teacher's cache, exports, reports, every decision) stays in the worker.
The worker launches the ranks the way `torchrun` does (one process per rank, a TCP
rendezvous on a free loopback port, RANK/WORLD_SIZE known to each), hands them the stage
as one pickled `FitTask`, and relays what rank 0 reports into the job's events.

Inside `fit` a `Rank` (worker/rank.py, with the ranks' own side) makes the loop data-parallel: the model is wrapped in DDP,
each step's batch is split across the ranks (so `batch_size` stays the global batch and
one process and N give the same steps and learning rates), the epoch's figures are summed
over the ranks, and only rank 0 evaluates and writes checkpoints. A stop (cancel,
shutdown, lost lease) reaches every rank at the same step through a one-element
all-reduce, because ranks that stop at different steps would wait on each other forever.

Backends: NCCL with one GPU per rank on a CUDA worker, gloo on a CPU worker (the ranks
share its cores). Each rank dies with the worker (PR_SET_PDEATHSIG), so a worker killed
with SIGKILL leaves no orphans, and the job resumes elsewhere from rank 0's checkpoint.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
from typing import Any

import torch
import torch.multiprocessing as torch_mp
from safetensors.torch import load as load_tensors
from torch import nn

from worker.context import JobFailedError
from worker.control import JobControl
from worker.rank import FitTask, Launch, rank_main
from worker.train import FitResult, Progress, ProgressSink, TrainingDivergedError

log = logging.getLogger(__name__)

# How often the worker relays rank 0's messages and passes on a stop (seconds).
POLL_SECONDS = 0.2
# After one rank fails, the others get this long to end, twice, before SIGKILL.
RANK_GRACE_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PortablePickler(pickle.Pickler):
    """Pickles tensors by value, GPU ones as CPU copies: each rank moves what it gets to
    its own device. (The default multiprocessing pickler would share the worker's memory
    with the ranks, and every rank would then train the same weights in place.)"""

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, torch.Tensor)
            and not isinstance(obj, nn.Parameter)
            and obj.device.type != "cpu"
        ):
            return obj.detach().cpu().__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return NotImplemented


def dumps_task(task: FitTask) -> bytes:
    buf = io.BytesIO()
    _PortablePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(task)
    return buf.getvalue()


def fit_in_processes(
    task: FitTask,
    *,
    processes: int,
    device: torch.device,
    control: JobControl,
    sink: ProgressSink,
    threads: int,
) -> FitResult:
    """Run `task` as `processes` ranks; returns rank 0's result, its weights loaded into
    `task.model` (and `task.extra_modules`). Raises what the stage raised, or the job's
    interruption when it was stopped."""
    cuda = device.type == "cuda"
    if cuda and processes > torch.cuda.device_count():
        raise JobFailedError(
            "resources",
            f"resources ask for {processes} training processes, one per GPU, and this "
            f"worker has {torch.cuda.device_count()} GPU(s)",
        )
    # Hooks hold handles that do not pickle: off for pickling, back on at once.
    for hook in task.hooks:
        hook.remove()
    try:
        # In shared memory: each rank maps it instead of reading it through its start-up
        # pipe, where a large pickle holds up the start of the next rank.
        blob = torch.frombuffer(bytearray(dumps_task(task)), dtype=torch.uint8).share_memory_()
    finally:
        for hook in task.hooks:
            hook.attach()
    ctx = torch_mp.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    per_rank_threads = max(1, threads // processes) if not cuda else threads
    launch = Launch(
        blob=blob,
        world=processes,
        port=free_port(),
        backend="nccl" if cuda else "gloo",
        threads=per_rank_threads,
        parent=os.getpid(),
    )
    log.info(
        "%s: training as %d %s processes (%d threads each)",
        task.stage_name,
        processes,
        launch.backend,
        per_rank_threads,
    )
    procs = torch_mp.start_processes(
        rank_main,
        args=(launch, messages, stop),
        nprocs=processes,
        join=False,
        start_method="spawn",
    )
    relay = Relay(task, sink)
    try:
        while True:
            if interrupted(control):
                stop.set()
            try:
                # Ranks ignore SIGTERM (worker/rank.py): after a failure the rest are
                # killed after RANK_GRACE_SECONDS twice.
                finished = procs.join(timeout=POLL_SECONDS, grace_period=RANK_GRACE_SECONDS)
            except (torch_mp.ProcessRaisedException, torch_mp.ProcessExitedException):
                relay.drain(messages)
                relay.raise_error()
                raise
            relay.drain(messages)
            if finished:
                break
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()
        messages.close()
    # Every rank stopped at the same step; the worker's control says why.
    control.check()
    return relay.result()


def interrupted(control: JobControl) -> bool:
    return any(e.is_set() for e in (control.cancelled, control.shutdown, control.lease_lost))


class Relay:
    """The worker's side of rank 0's messages: progress and metrics into the job's
    events, then the result (or the error)."""

    def __init__(self, task: FitTask, sink: ProgressSink) -> None:
        self.task, self.sink = task, sink
        self.done: dict[str, Any] | None = None
        self.error: tuple[str, str, str] | None = None

    def drain(self, messages: Any) -> None:
        while not messages.empty():
            kind, body = messages.get()
            if kind == "progress":
                loss = body.pop("loss")
                self.sink.progress(Progress(loss=lambda v=loss: v, **body))
            elif kind == "metric":
                self.sink.metric(**body)
            elif kind == "done":
                self.done = body
            elif kind == "error":
                self.error = body

    def raise_error(self) -> None:
        if self.error is None:
            return
        kind, code, message = self.error
        if kind == "diverged":
            raise TrainingDivergedError(message)
        if kind == "failed":
            raise JobFailedError(code, message)
        raise RuntimeError(f"a training process failed: {message}")

    def result(self) -> FitResult:
        self.raise_error()
        if self.done is None:
            raise RuntimeError("the training processes ended without a result")
        self.task.model.load_state_dict(load_tensors(self.done["model"]))
        if self.task.extra_modules is not None and self.done["extra"] is not None:
            self.task.extra_modules.load_state_dict(load_tensors(self.done["extra"]))
        return FitResult(
            epochs_run=self.done["epochs_run"],
            history=self.done["history"],
            seconds=self.done["seconds"],
        )
