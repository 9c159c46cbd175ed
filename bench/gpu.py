"""GPU check (issue 5): KD throughput on a CIFAR-sized synthetic set, plain loop vs ours.

50,000 images 3x32x32 (the synthetic generator), a resnet18 teacher and a small_cnn
student (width 1). The plain loop is what a competent GPU user writes: DataLoader with
pinned memory, bf16 autocast, the teacher's forward pass every step. Ours is a real
`distill` job on the same data, run by the worker on the same device: teacher outputs
cached once, data resident on the GPU, channels_last, cudnn.benchmark, bf16.
Both count the teacher's cost: images/s = images trained / seconds, cache pass included.

    bench/gpu.sh                          # on a GPU machine, a few minutes
    bench/gpu.sh --device cpu --size 512  # the same code path, tiny, on a CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from app.core.losses import soft_target_kl
from app.core.network import NetworkConfig, build_network
from app.schemas.stage_spec import DatasetRef
from bench.harness import Harness, machine
from bench.train_speed import stage_seconds
from worker.data import load_dataset

log = logging.getLogger("bench.gpu")


def plain_kd_throughput(
    device: torch.device, data: Any, *, epochs: int, batch_size: int, seed: int
) -> float:
    torch.manual_seed(seed)
    mean, std = data.channel_stats()
    teacher = build_network(NetworkConfig("resnet18", 10, 3, 32, scale=255.0, mean=mean, std=std))
    student = build_network(NetworkConfig("small_cnn", 10, 3, 32, scale=255.0, mean=mean, std=std))
    teacher.eval().to(device)
    student.train().to(device)
    cuda = device.type == "cuda"
    loader = DataLoader(
        TensorDataset(data.x), batch_size=batch_size, shuffle=True, pin_memory=cuda, drop_last=False
    )
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for (xb,) in loader:
            xb = xb.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                with torch.no_grad():
                    t_logits = teacher(xb)
                loss = soft_target_kl(student(xb), t_logits, 4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(xb)
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def run(
    device: str = "auto", size: int = 50_000, epochs: int = 2, batch_size: int = 256
) -> dict[str, Any]:
    dev = torch.device(
        "cuda"
        if device == "auto" and torch.cuda.is_available()
        else ("cpu" if device == "auto" else device)
    )
    ref = {
        "name": "synthetic",
        "num_classes": 10,
        "channels": 3,
        "image_size": 32,
        "num_samples": size,
    }
    h = Harness()
    data = load_dataset(DatasetRef(**ref), data_root=h.root, seed=0)
    plain = plain_kd_throughput(dev, data, epochs=epochs, batch_size=batch_size, seed=0)
    # The teacher: a resnet18 `train` job of one short epoch (its weights do not change the
    # throughput); then the distill job whose stage time is measured.
    teacher = h.run(
        {
            "kind": "train",
            "name": "gpu-teacher",
            "model": {"arch": "resnet18"},
            "train": {
                "dataset": {**ref, "num_samples": min(size, 2048)},
                "epochs": 1,
                # Exactly one epoch: the default minimum of optimiser steps would train a
                # small set for several.
                "min_steps": 0,
                "eval_every": 0,
            },
            "evaluate": {"dataset": {**ref, "split": "test", "num_samples": 256}},
        },
        device=dev.type,
    )
    job = h.run(
        {
            "kind": "distill",
            "name": "gpu-distill",
            "teacher": {"source": "model", "model_id": teacher["model_id"]},
            "student": {"arch": "small_cnn", "width": 1.0},
            "distill": {
                "dataset": {**ref, "labels": False},
                "epochs": epochs,
                # Exactly `epochs`: the images/s below count size x epochs.
                "min_steps": 0,
                "batch_size": batch_size,
                "eval_every": 0,
                "loss": {"type": "kl", "temperature": 4.0},
            },
            "evaluate": {"dataset": {**ref, "split": "test", "num_samples": 256}},
        },
        device=dev.type,
    )
    seconds, _ = stage_seconds(job, "distill")
    ours = size * epochs / seconds
    return {
        "device": str(dev),
        "gpu_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        "images": size,
        "epochs": epochs,
        "batch_size": batch_size,
        "plain_images_per_second": round(plain, 1),
        "ours_images_per_second": round(ours, 1),
        "speedup": round(ours / plain, 2),
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args.device, args.size, args.epochs, args.batch_size)
    sys.stdout.write(
        f"GPU: {result['gpu_name'] or 'none (' + result['device'] + ')'}\n"
        f"plain KD loop: {result['plain_images_per_second']:.0f} images/s\n"
        f"stillhouse:    {result['ours_images_per_second']:.0f} images/s "
        f"({result['speedup']}x)\n"
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
