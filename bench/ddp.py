"""Data-parallel training on the CPU: 2 gloo processes against 1, and against a plain
hand-written DDP loop.

Three runs of the same stage (small_cnn on scikit-learn's digits, the same seed, global
batch, epochs, optimiser and schedule), one after another on this machine:

- `one`: Stillhouse's fit in one process with every thread (`STILLHOUSE_THREADS`);
- `two`: Stillhouse's data-parallel fit (worker/parallel.py), 2 processes of half the
  threads each, launched as the worker launches them;
- `plain`: the baseline, a hand-written DDP loop in plain torch (torch.multiprocessing
  spawn, DistributedDataParallel, each rank a strided share of a seeded shuffle, AdamW
  with the same warm-up and cosine), 2 processes of half the threads each.

Each prints its test accuracy, its step time (the training loop's seconds / its steps,
start-up excluded) and its wall time with the start-up of the processes. Ratios:
`two / one` (what a second process buys or costs here) and `two / plain` (what our
loop costs over a bare DDP loop).

    .venv/bin/python -m bench.ddp [--epochs 20] [--width 1.0]

The goal in issue 11: 2 processes reach 1 process's accuracy within 1 point on digits,
and the step time is recorded (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
import torch.nn.functional as F

from bench.harness import machine

log = logging.getLogger("bench.ddp")


def _data() -> tuple[Any, Any]:
    from app.schemas.stage_spec import DatasetRef
    from worker.data import load_dataset

    train = load_dataset(DatasetRef(name="digits"), data_root=Path("data"), seed=0)
    test = load_dataset(DatasetRef(name="digits", split="test"), data_root=Path("data"), seed=0)
    return train, test


def _net(width: float) -> torch.nn.Module:
    from app.core.network import NetworkConfig, build_network

    torch.manual_seed(0)
    return build_network(NetworkConfig("small_cnn", 10, 1, 8, width=width))


def _stage(epochs: int, train: Any) -> Any:
    from app.schemas.stage_spec import DatasetRef, StageSpec
    from worker.schedule import resolve_stage

    spec = StageSpec(dataset=DatasetRef(name="digits"), epochs=epochs, batch_size=64, min_steps=0)
    return resolve_stage(spec, train)


def _accuracy(model: torch.nn.Module, test: Any) -> float:
    from worker.train import evaluate

    return evaluate(model, test, device=torch.device("cpu"))["accuracy"]


def run_ours(epochs: int, width: float, processes: int, threads: int) -> dict[str, Any]:
    from worker.control import JobControl
    from worker.objectives import supervised
    from worker.parallel import fit_in_processes
    from worker.rank import FitTask
    from worker.train import NullSink, fit

    train, test = _data()
    stage, model = _stage(epochs, train), _net(width)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    if processes == 1:
        result = fit(
            stage_name="bench",
            model=model,
            train=train,
            stage=stage,
            objective=supervised(),
            device=torch.device("cpu"),
            seed=0,
            control=JobControl(),
            sink=NullSink(),
        )
    else:
        task = FitTask("bench", model, train, stage, supervised(), 0, None, None, None, None, [])
        result = fit_in_processes(
            task,
            processes=processes,
            device=torch.device("cpu"),
            control=JobControl(),
            sink=NullSink(),
            threads=threads,
        )
    wall = time.perf_counter() - started
    steps = epochs * math.ceil(len(train) / stage.batch_size)
    return {
        "processes": processes,
        "accuracy": round(_accuracy(model, test), 4),
        "step_ms": round(1000 * result.seconds / steps, 3),
        "wall_seconds": round(wall, 2),
        "steps": steps,
    }


def _plain_rank(
    rank: int, world: int, port: int, epochs: int, width: float, threads: int, out: Any
) -> None:
    """The baseline: a DDP loop as one writes it by hand from the torch tutorial."""
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(minutes=10),
    )
    train, test = _data()
    stage = _stage(epochs, train)
    model = torch.nn.parallel.DistributedDataParallel(_net(width))
    opt = torch.optim.AdamW(
        model.parameters(), lr=stage.optimizer.lr, weight_decay=stage.optimizer.weight_decay
    )
    per_epoch = math.ceil(len(train) / stage.batch_size)
    total = epochs * per_epoch
    warmup = round(stage.scheduler.warmup_epochs * per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(0)
    x_all, y_all = train.x.float(), train.y
    started = time.perf_counter()
    for _epoch in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for idx in order.split(stage.batch_size):
            mine = idx[rank::world]
            loss = F.cross_entropy(model(x_all[mine]), y_all[mine])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - started
    if rank == 0:
        out.put({"seconds": seconds, "steps": total, "accuracy": _accuracy(model.module, test)})
    dist.destroy_process_group()


def run_plain(epochs: int, width: float, processes: int, threads: int) -> dict[str, Any]:
    from worker.parallel import free_port

    ctx = torch_mp.get_context("spawn")
    out = ctx.SimpleQueue()
    started = time.perf_counter()
    torch_mp.start_processes(
        _plain_rank,
        args=(processes, free_port(), epochs, width, max(1, threads // processes), out),
        nprocs=processes,
        start_method="spawn",
    )
    got = out.get()
    return {
        "processes": processes,
        "accuracy": round(got["accuracy"], 4),
        "step_ms": round(1000 * got["seconds"] / got["steps"], 3),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "steps": got["steps"],
    }


def run(epochs: int = 20, width: float = 1.0, threads: int | None = None) -> dict[str, Any]:
    threads = threads or int(os.environ.get("STILLHOUSE_THREADS", 0)) or (os.cpu_count() or 1)
    one = run_ours(epochs, width, 1, threads)
    log.info("one process: %s", one)
    two = run_ours(epochs, width, 2, threads)
    log.info("two processes: %s", two)
    plain = run_plain(epochs, width, 2, threads)
    log.info("plain DDP: %s", plain)
    return {
        "bench": "ddp",
        "model": f"small_cnn width {width}, digits, {epochs} epochs, global batch 64",
        "one": one,
        "two": two,
        "plain": plain,
        "accuracy_gap_points": round(100 * (two["accuracy"] - one["accuracy"]), 2),
        "step_time_two_over_one": round(two["step_ms"] / one["step_ms"], 3),
        "step_time_two_over_plain": round(two["step_ms"] / plain["step_ms"], 3),
        **machine(),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args.epochs, args.width, args.threads)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
