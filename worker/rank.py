"""Inside one data-parallel rank (worker/parallel.py launches them): the stage it is
handed (`FitTask`), its place in the group (`Rank`, which the fit loop uses), and its
life: join the group, fit, send rank 0's result to the worker, die with the worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save as save_tensors
from torch import nn

from app.core.datasets import InMemoryData
from app.logging_setup import configure_logging
from app.schemas.stage_spec import StageSpec
from worker.checkpoints import CheckpointStore
from worker.context import JobFailedError
from worker.control import JobControl, StopRequested
from worker.inference import FeatureHook
from worker.train import (
    EvalFn,
    NullSink,
    Objective,
    Progress,
    TrainingDivergedError,
    fit,
)

log = logging.getLogger(__name__)

# Progress messages from rank 0 at most this often: reading the loss syncs its device.
PROGRESS_EVERY_SECONDS = 0.5
# A collective that waits longer than this fails the stage (rank 0 evaluating a large set
# while the others wait at the next step is the longest legitimate wait).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
PR_SET_PDEATHSIG = 1


@dataclass
class FitTask:
    """Everything one rank needs for one stage's fit, pickled once for all ranks.

    The objective, `eval_fn` and `on_epoch_start` are objects (not closures) so they pickle;
    they and `model` share sub-objects (a hint hook on the model, say), and one pickle
    keeps that sharing on the other side.
    """

    stage_name: str
    model: nn.Module
    train: InMemoryData
    stage: StageSpec
    objective: Objective
    seed: int
    checkpoints: CheckpointStore | None
    eval_fn: EvalFn | None
    extra_modules: nn.ModuleDict | None
    on_epoch_start: Any  # Callable[[int], None] | None, picklable
    hooks: list[FeatureHook]

    def fit_args(self) -> dict[str, Any]:
        """`fit`'s arguments from the task (the caller adds device, control and sink)."""
        return {
            "stage_name": self.stage_name,
            "model": self.model,
            "train": self.train,
            "stage": self.stage,
            "objective": self.objective,
            "seed": self.seed,
            "checkpoints": self.checkpoints,
            "eval_fn": self.eval_fn,
            "extra_modules": self.extra_modules,
            "on_epoch_start": self.on_epoch_start,
        }


class Rank:
    """This process's place in a data-parallel fit (used by worker/train.py's `fit`)."""

    def __init__(self, rank: int, world: int, device: torch.device, stop: Any) -> None:
        self.rank, self.world, self.device = rank, world, device
        self._stop = stop  # a multiprocessing Event the worker sets

    @property
    def writes(self) -> bool:
        """Rank 0 alone evaluates, reports and writes checkpoints."""
        return self.rank == 0

    def wrap(self, model: nn.Module, *, some_frozen: bool) -> nn.Module:
        # Wrapped while every parameter trains: DDP leaves out for good the parameters
        # that are frozen when it is built, so later epochs would not sync them.
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=some_frozen
        )

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch. A last batch smaller than the world
        repeats its last sample on the ranks it does not reach: every rank must step."""
        part = idx.tensor_split(self.world)[self.rank]
        return part if len(part) else idx[-1:]

    def stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop.is_set() else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def sum(self, *values: torch.Tensor) -> list[float]:
        """Each value summed over the ranks (one collective)."""
        stacked = torch.stack([v.detach().double().to(self.device) for v in values])
        dist.all_reduce(stacked)
        return [float(v) for v in stacked.cpu()]

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """For parameters outside the DDP module (a hint adapter): the mean gradient."""
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world


@dataclass
class Launch:
    """How a rank joins its group (torchrun's RANK/WORLD_SIZE/MASTER_PORT, in one value)."""

    blob: torch.Tensor  # the pickled FitTask, uint8, in shared memory
    world: int
    port: int
    backend: str
    threads: int
    parent: int


class _QueueSink:
    """Rank 0's sink: progress (throttled) and metrics to the worker."""

    def __init__(self, messages: Any) -> None:
        self.messages = messages
        self.last = 0.0

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        last_step = progress.step == progress.steps
        if now - self.last < PROGRESS_EVERY_SECONDS and not last_step:
            return
        self.last = now
        body = {k: getattr(progress, k) for k in ("stage", "epoch", "epochs", "step", "steps")}
        body.update(eta_seconds=progress.eta_seconds, loss=progress.loss())
        self.messages.put(("progress", body))

    def metric(self, *, stage: str, epoch: int, values: dict[str, float]) -> None:
        self.messages.put(("metric", {"stage": stage, "epoch": epoch, "values": values}))


def _die_with_parent(parent: int) -> None:
    """SIGKILL this rank when the worker dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        log.warning("cannot ask to die with the worker (not Linux?)")
    if os.getppid() != parent:
        os._exit(1)  # the worker died before the request took effect


def _state_bytes(module: nn.Module | None) -> bytes | None:
    if module is None:
        return None
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def rank_main(rank: int, launch: Launch, messages: Any, stop: Any) -> None:
    """One rank: join the group, unpickle the stage, fit, and (rank 0) send the result."""
    _die_with_parent(launch.parent)
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, is the
    # worker's to handle: it stops the ranks at a step and gives the job back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(os.environ.get("STILLHOUSE_LOG_LEVEL", "INFO"))
    torch.set_num_threads(launch.threads)
    if launch.backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        launch.backend,
        init_method=f"tcp://127.0.0.1:{launch.port}",
        rank=rank,
        world_size=launch.world,
        timeout=COLLECTIVE_TIMEOUT,
    )
    me = Rank(rank, launch.world, device, stop)
    try:
        run_rank(launch.blob.numpy().tobytes(), me, messages)
    finally:
        dist.destroy_process_group()


def run_rank(blob: bytes, me: Rank, messages: Any) -> None:
    """One rank's stage, in a group already joined (by `rank_main`, or by Ray Train for
    worker/ray_train.py): unpickle the task, fit, and (rank 0) put the result, or the
    error, on `messages`."""
    try:
        task: FitTask = pickle.loads(blob)
        for hook in task.hooks:
            hook.attach()
        move = getattr(task.objective, "to", None)
        if move is not None:
            move(me.device)
        task.model.to(me.device)
        if task.extra_modules is not None:
            task.extra_modules.to(me.device)
        args = task.fit_args()
        if not me.writes:
            args["eval_fn"] = None  # rank 0 alone evaluates
        result = fit(
            **args,
            device=me.device,
            control=JobControl(),  # unused: `me` carries the stop
            sink=_QueueSink(messages) if me.writes else NullSink(),
            rank=me,
        )
        if me.writes:
            body = {
                "epochs_run": result.epochs_run,
                "history": result.history,
                "seconds": result.seconds,
                "model": _state_bytes(task.model),
                "extra": _state_bytes(task.extra_modules),
            }
            messages.put(("done", body))
    except StopRequested:
        log.info("rank %d: stopped at the worker's request", me.rank)
    except Exception as exc:
        if me.writes:
            messages.put(("error", _describe(exc)))
        raise


def _describe(exc: Exception) -> tuple[str, str, str]:
    if isinstance(exc, TrainingDivergedError):
        return ("diverged", "diverged", str(exc))
    if isinstance(exc, JobFailedError):
        return ("failed", exc.code, str(exc))
    return ("internal", "internal", "".join(traceback.format_exception_only(exc)).strip())
