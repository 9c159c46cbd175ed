"""Data-parallel stages on a Ray cluster: the same ranks as worker/parallel.py, placed by
Ray Train instead of spawned on this machine.

With `STILLHOUSE_RAY_ADDRESS` set, a stage that asks for more processes than this worker
runs itself (`STILLHOUSE_LOCAL_PROCESSES`; by default one per GPU, or per core) goes to
the cluster as a `TorchTrainer` of that many workers (one CPU each, and one GPU each on a
GPU job). Ray Train joins them into a torch.distributed group (gloo, or NCCL with GPUs);
each runs the same `run_rank` as a local rank (worker/rank.py): the pickled `FitTask`, the
same `fit` and DDP loop, rank 0 checkpointing. What rank 0 reports comes back through a
Ray queue and is relayed into the job's events by the same `Relay`; a cancel, a
shutdown or a lost lease sets a flag that every rank reads within a step.

Across machines, rank 0 writes the stage's checkpoints where it runs: give the cluster
and the worker one artifact store (`STILLHOUSE_ARTIFACT_URL`, docs/deploy.md), so that a
resumed stage finds them.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

import torch

from app.config import Settings, usable_cores
from worker.context import JobFailedError
from worker.control import JobControl
from worker.parallel import POLL_SECONDS, Relay, dumps_task, interrupted
from worker.rank import FitTask, Rank, run_rank
from worker.train import FitResult, ProgressSink

log = logging.getLogger(__name__)

# A rank asks the worker whether to stop at most this often (a call to a Ray actor).
STOP_POLL_SECONDS = 0.5
# How long the cluster's address may take to accept a connection.
PROBE_SECONDS = 3.0
# A collective that waits longer fails the stage (as worker/rank.py's COLLECTIVE_TIMEOUT).
COLLECTIVE_TIMEOUT_S = 1800


def wants_ray(settings: Settings, processes: int, *, cuda: bool) -> bool:
    """Whether a stage of `processes` ranks goes to the Ray cluster: one is configured and
    the stage needs more than this worker runs itself."""
    if not settings.ray_address or processes <= 1:
        return False
    local = settings.local_processes
    if local == 0:
        local = torch.cuda.device_count() if cuda else usable_cores()
    return processes > local


def connect(address: str) -> Any:
    """The `ray` module, connected to the cluster at `address` (once per process)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(
            f"STILLHOUSE_RAY_ADDRESS={address} needs Ray: pip install 'stillhouse[ray]'"
        ) from exc
    _answers(address)
    if not ray.is_initialized():
        # The worker's own logs stay its own; Ray's go to the cluster's log files.
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return ray


def _answers(address: str) -> None:
    """Fail in seconds when nothing listens at the cluster's address: `ray.init` would
    retry for minutes (measured: over 3) before it gave up."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc})") from None


def cluster_gpus(address: str) -> int:
    """GPUs in the Ray cluster at `address`; 0 when it cannot be reached (the worker then
    claims what it can run by itself, and says why)."""
    try:
        return int(connect(address).cluster_resources().get("GPU", 0))
    except Exception as exc:
        log.warning(
            "the Ray cluster at %s did not answer (%s): its GPUs are not counted", address, exc
        )
        return 0


def fit_on_ray(
    task: FitTask,
    *,
    processes: int,
    device: torch.device,
    control: JobControl,
    sink: ProgressSink,
    address: str,
) -> FitResult:
    """Run `task` as `processes` Ray Train workers; returns rank 0's result, its weights
    loaded into `task.model`. Raises what the stage raised, or the job's interruption."""
    try:
        ray = connect(address)
    except Exception as exc:
        raise JobFailedError(
            "unavailable", f"the Ray cluster at {address} (STILLHOUSE_RAY_ADDRESS): {exc}"
        ) from exc
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    cuda = device.type == "cuda"
    for hook in task.hooks:
        hook.remove()
    try:
        blob = ray.put(dumps_task(task))
    finally:
        for hook in task.hooks:
            hook.attach()
    messages = Queue()
    stop = ray.remote(_StopFlag).options(num_cpus=0).remote()
    run_dir = tempfile.mkdtemp(prefix="stillhouse-ray-")
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"task": blob, "messages": messages, "stop": stop},
        torch_config=TorchConfig(
            backend="nccl" if cuda else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S
        ),
        scaling_config=ScalingConfig(
            num_workers=processes, use_gpu=cuda, resources_per_worker={"CPU": 1}
        ),
        # No retries: a failed stage fails the job (or the worker requeues it), as a
        # local one does; Ray's run folder is scratch, the job's checkpoints are ours.
        run_config=RunConfig(
            name=task.stage_name,
            storage_path=run_dir,
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    log.info("%s: training as %d Ray Train workers at %s", task.stage_name, processes, address)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            trainer.fit()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"ray-{task.stage_name}", daemon=True)
    thread.start()
    relay = Relay(task, sink)
    stopping = False
    try:
        while thread.is_alive():
            if not stopping and interrupted(control):
                stopping = True
                ray.get(stop.set.remote())
            relay.drain(messages)
            thread.join(POLL_SECONDS)
        relay.drain(messages)
    finally:
        if thread.is_alive():
            ray.get(stop.set.remote())
        ray.kill(stop)
        messages.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
    if "error" in outcome:
        relay.raise_error()
        raise RuntimeError(f"the Ray training run failed: {outcome['error']}")
    # Every rank stopped at the same step; the worker's control says why.
    control.check()
    return relay.result()


class _StopFlag:
    """An actor the worker sets to stop the ranks (a cancel, a shutdown, a lost lease)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


class _PolledStop:
    """The stop flag as a rank reads it every step: asking the actor at most every
    STOP_POLL_SECONDS (the ranks agree through Rank.stop_requested's all-reduce)."""

    def __init__(self, ray: Any, flag: Any) -> None:
        self.ray, self.flag = ray, flag
        self.value, self.asked = False, 0.0

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self.value and now - self.asked >= STOP_POLL_SECONDS:
            self.asked = now
            self.value = bool(self.ray.get(self.flag.is_set.remote()))
        return self.value


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its place in the group Ray Train set up, then the rank."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    # One CPU reserved per worker (resources_per_worker): one torch thread.
    torch.set_num_threads(1)
    me = Rank(
        context.get_world_rank(),
        context.get_world_size(),
        device,
        _PolledStop(ray, config["stop"]),
    )
    blob = config["task"]
    run_rank(ray.get(blob) if isinstance(blob, ray.ObjectRef) else blob, me, config["messages"])
