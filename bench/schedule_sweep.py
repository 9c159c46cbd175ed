"""The sweep behind the stage defaults (app/schemas/stage_spec.py OPTIMIZER_DEFAULTS,
MIN_STEPS, the batch rule in worker/schedule.py): one small student trained from scratch
by the real fit loop, with only `epochs` given, on three data sizes:

- shots:   digits 5-9, 10 labelled images per class (50 images), 60 epochs;
- shots_10_epochs: the same 50 images for 10 epochs (where the minimum steps matter);
- digits:  all ten digits' train split (1,437 images), 30 epochs;
- fashion: Fashion-MNIST's 60,000 training images, 2 epochs (Debian's files).

Per size, each optimiser setting is scored by test accuracy (mean over seeds), beside the
old defaults (batch 64, no minimum steps, no augmentation, adamw lr 1e-3, weight decay
5e-4) run in the
same process, so that the gain of the new rules is a ratio measured here and now.

    python -m bench.schedule_sweep                 # ~10 minutes on 2 cores
    python -m bench.schedule_sweep --sizes shots   # the few-shot rows only (~2 minutes)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any

import torch

from app.core.network import NetworkConfig, build_network
from app.schemas.stage_spec import DatasetRef, StageSpec
from bench.fashion_kd import ensure_fashion_mnist
from bench.harness import Harness, machine, mean_std
from worker.control import JobControl
from worker.data import load_dataset
from worker.objectives import supervised
from worker.train import NullSink, evaluate, fit

log = logging.getLogger("bench.schedule_sweep")

SIZES: dict[str, dict[str, Any]] = {
    "shots": {
        "train": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 60,
        "width": 0.25,
    },
    # The same 50 images with the 10 epochs a user might type: where min_steps matters.
    "shots_10_epochs": {
        "train": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 10,
        "width": 0.25,
    },
    "digits": {"train": {"name": "digits"}, "epochs": 30, "width": 0.25},
    "fashion": {"train": {"name": "torchvision:FashionMNIST"}, "epochs": 2, "width": 0.5},
}

# (label, stage overrides). "old" is the defaults before this sweep; the rest use the
# new batch, length and warm-up rules with one optimiser setting each, and augment "auto"
# (none on these grey images); the last three rows take one rule away from the defaults.
OLD = {
    "batch_size": 64,
    "min_steps": 0,
    "augment": "none",
    "scheduler": {"warmup_epochs": 0},
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4},
}
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("old defaults", OLD),
    ("adamw 1e-3 wd 5e-4", {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4}}),
    ("adamw 1e-3 wd 0.05", {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}}),
    ("adamw 2e-3 wd 0.05", {"optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}}),
    ("adamw 5e-3 wd 0.05", {"optimizer": {"name": "adamw", "lr": 5e-3, "weight_decay": 0.05}}),
    ("adamw 1e-2 wd 0.05", {"optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05}}),
    ("adam 1e-3", {"optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}}),
    ("sgd 0.02", {"optimizer": {"name": "sgd", "lr": 0.02, "weight_decay": 5e-4}}),
    ("sgd 0.05", {"optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}}),
    ("sgd 0.1", {"optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4}}),
    ("adamw 5e-3, min_steps 0", {"min_steps": 0}),
    ("adamw 5e-3, no warm-up", {"scheduler": {"warmup_epochs": 0}}),
    ("adamw 5e-3, augment crop", {"augment": "crop"}),
]


# The row the defaults were chosen from (OPTIMIZER_DEFAULTS["adamw"]).
NEW = "adamw 5e-3 wd 0.05"


def one_run(
    train: Any, test: Any, size: dict[str, Any], overrides: dict[str, Any], seed: int
) -> tuple[float, float]:
    """Test accuracy and seconds of one fit with `overrides` on top of epochs only."""
    mean, std = train.channel_stats()
    config = NetworkConfig(
        "small_cnn",
        train.num_classes,
        train.x.shape[1],
        train.image_size,
        scale=train.scale,
        mean=mean,
        std=std,
        width=size["width"],
    )
    torch.manual_seed(seed)
    net = build_network(config)
    stage = StageSpec(dataset=DatasetRef(**size["train"]), epochs=size["epochs"], **overrides)
    t0 = time.perf_counter()
    fit(
        stage_name="sweep",
        model=net,
        train=train,
        stage=stage,
        objective=supervised(),
        device=torch.device("cpu"),
        seed=seed,
        control=JobControl(),
        sink=NullSink(),
    )
    seconds = time.perf_counter() - t0
    return evaluate(net, test, device=torch.device("cpu"))["accuracy"], seconds


def run(sizes: list[str], seeds: list[int]) -> dict[str, Any]:
    h = Harness()
    ensure_fashion_mnist(h.root) if "fashion" in sizes else None
    results: dict[str, Any] = {}
    for name in sizes:
        size = SIZES[name]
        train = load_dataset(DatasetRef(**size["train"]), data_root=h.root, seed=0)
        test_ref = {**size["train"], "split": "test", "samples_per_class": None}
        test = load_dataset(DatasetRef(**test_ref), data_root=h.root, seed=0)
        rows = {}
        for label, overrides in SETTINGS:
            runs = [one_run(train, test, size, overrides, seed) for seed in seeds]
            accs = [a for a, _ in runs]
            rows[label] = {
                **mean_std(accs),
                "seconds": round(statistics.mean(s for _, s in runs), 2),
            }
            log.info("%s %s: %s", name, label, rows[label])
        results[name] = {"train_images": len(train), "test_images": len(test), "rows": rows}
    return {"benchmark": "schedule_sweep", "seeds": seeds, "sizes": results, **machine()}


def table(result: dict[str, Any]) -> str:
    sizes = list(result["sizes"])
    head = "| setting | " + " | ".join(
        f"{s} ({result['sizes'][s]['train_images']:,} images)" for s in sizes
    )
    lines = [head + " |", "| --- |" + " --- |" * len(sizes)]
    for label, _ in SETTINGS:
        cells = []
        for s in sizes:
            r = result["sizes"][s]["rows"][label]
            cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} ({r['seconds']:.1f} s)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for s in sizes:
        rows = result["sizes"][s]["rows"]
        ratio = rows[NEW]["mean"] / max(1e-9, rows["old defaults"]["mean"])
        lines.append(f"\n{s}: new defaults / old defaults accuracy = {ratio:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args.sizes, args.seeds)
    sys.stdout.write(table(result) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
