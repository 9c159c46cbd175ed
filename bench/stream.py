"""Training on a streamed image folder against the same images held in memory, and
against a hand-written torchvision ImageFolder loop.

Writes `--files` PNG files (20,000 by default: the synthetic dataset's 3x32x32 images,
10 classes, a folder per class) into a temporary folder, indexes it as
`POST /api/v1/datasets` with a JSON body does (app.services.dataset_urls.scan), and
times `--epochs` epochs of the same stage three ways, taking turns for `--rounds` rounds
(this machine's speed drifts by 10-20% over minutes; each arm's median seconds per epoch,
start-up included, is reported):

- `memory`: Stillhouse's fit over the decoded images as one uint8 tensor (the fast path);
- `streamed`: Stillhouse's fit over the folder by URL, each batch read and decoded by
  DataLoader processes (worker/data.py: `loader_workers()`, every core but one);
- `plain`: the baseline, torchvision's ImageFolder and a DataLoader with as many worker
  processes, and a bare loop (same network, AdamW, batch and shuffling).

Prints each one's median seconds per epoch and the ratios `streamed / memory` (the goal in
issue 11: at most 1.3) and `streamed / plain`. A dataset by URL that fits the in-memory
bound is not streamed: the worker reads it into memory once, with a reader per core
(worker/data.py: `into_memory`); `first_epoch_in_memory_over_memory` is that read plus one
epoch in memory, over an epoch in memory. The files are read from the page cache
(they were just written): this measures decoding and the loader, not a disk or a
network.

    .venv/bin/python -m bench.stream [--files 20000] [--epochs 2] [--rounds 2] [--width 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from bench.harness import machine

log = logging.getLogger("bench.stream")
BATCH = 64


def write_folder(root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic images as class/NNNNNN.png; the images and labels, in memory."""
    from app.schemas.stage_spec import DatasetRef
    from worker.data import load_dataset

    data = load_dataset(DatasetRef(name="synthetic", num_samples=n), data_root=Path("data"), seed=0)
    assert data.y is not None
    for i, (img, label) in enumerate(zip(data.x.numpy(), data.y.tolist(), strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:06d}.png")
    return data.x, data.y  # type: ignore[return-value]


def _net(width: float) -> torch.nn.Module:
    from app.core.network import NetworkConfig, build_network

    torch.manual_seed(0)
    return build_network(NetworkConfig("small_cnn", 10, 3, 32, width=width))


def run_ours(data: Any, epochs: int, width: float) -> dict[str, Any]:
    from app.schemas.stage_spec import DatasetRef, StageSpec
    from worker.control import JobControl
    from worker.objectives import supervised
    from worker.train import NullSink, fit

    spec = StageSpec(
        dataset=DatasetRef(name="synthetic"),
        epochs=epochs,
        batch_size=BATCH,
        min_steps=0,
        augment="none",
    )
    result = fit(
        stage_name="bench",
        model=_net(width),
        train=data,
        stage=spec,
        objective=supervised(),
        device=torch.device("cpu"),
        seed=0,
        control=JobControl(),
        sink=NullSink(),
    )
    return {
        "epoch_seconds": round(result.seconds / epochs, 3),
        "train_accuracy": round(result.history[-1]["train_accuracy"], 4),
    }


def run_plain(root: Path, epochs: int, width: float, workers: int) -> dict[str, Any]:
    """The hand-written baseline: ImageFolder, a DataLoader, a bare AdamW loop."""
    from torchvision import datasets, transforms

    folder = datasets.ImageFolder(str(root), transform=transforms.PILToTensor())
    loader = torch.utils.data.DataLoader(
        folder,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        prefetch_factor=4,
        generator=torch.Generator().manual_seed(0),
    )
    model = _net(width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    correct = seen = 0
    for _ in range(epochs):
        correct = seen = 0
        for x, y in loader:
            logits = model(x.float())
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    seconds = time.perf_counter() - started
    return {
        "epoch_seconds": round(seconds / epochs, 3),
        "train_accuracy": round(correct / max(1, seen), 4),
    }


def run(
    files: int = 20_000, epochs: int = 2, rounds: int = 2, width: float = 1.0
) -> dict[str, Any]:
    from app.core.datasets import InMemoryData
    from app.core.datasets.streamed import read_index
    from app.services.dataset_urls import scan
    from worker.data import into_memory, loader_workers

    times: dict[str, list[float]] = {"memory": [], "streamed": [], "plain": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="stillhouse-stream-") as tmp:
        root = Path(tmp) / "folder"
        t0 = time.perf_counter()
        write_folder(root, files)
        log.info("wrote %d PNG files in %.1fs", files, time.perf_counter() - t0)
        t0 = time.perf_counter()
        index, _stats = scan(f"file://{root}", "image_folder", None)
        index_seconds = time.perf_counter() - t0
        index.write(Path(tmp) / "set.index.json")
        streamed = read_index(Path(tmp) / "set.index.json")
        # The same images, decoded once into memory in the index's order.
        t0 = time.perf_counter()
        x = streamed.x[:]
        decode_seconds = time.perf_counter() - t0
        memory = InMemoryData(x, streamed.y, streamed.class_names, 255.0, "memory")
        t0 = time.perf_counter()
        into_memory(streamed)
        read_seconds = time.perf_counter() - t0
        for r in range(rounds):
            for arm in times:
                if arm == "plain":
                    out = run_plain(root, epochs, width, loader_workers())
                else:
                    out = run_ours(memory if arm == "memory" else streamed, epochs, width)
                times[arm].append(out["epoch_seconds"])
                accuracy[arm] = out["train_accuracy"]
                log.info("round %d, %s: %s", r + 1, arm, out)
    median = {arm: round(statistics.median(t), 3) for arm, t in times.items()}
    return {
        "bench": "stream",
        "data": f"{files} PNG files, synthetic 3x32x32, 10 classes, page cache",
        "model": f"small_cnn width {width}, batch {BATCH}, {epochs} epochs a run, {rounds} rounds",
        "loader_workers": loader_workers(),
        "index_seconds": round(index_seconds, 2),
        "decode_all_seconds": round(decode_seconds, 2),
        "into_memory_seconds": round(read_seconds, 2),
        "epoch_seconds": median,
        "epoch_seconds_each": times,
        "train_accuracy": accuracy,
        "streamed_over_memory": round(median["streamed"] / median["memory"], 3),
        "streamed_over_plain": round(median["streamed"] / median["plain"], 3),
        "first_epoch_in_memory_over_memory": round(
            (read_seconds + median["memory"]) / median["memory"], 3
        ),
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args.files, args.epochs, args.rounds, args.width)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
