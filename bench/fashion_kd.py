"""Fashion-MNIST knowledge distillation: does a teacher make the small student better?

Real Fashion-MNIST (60,000 train, 10,000 test images, 28x28 grey), read offline from
Debian's `dataset-fashion-mnist` files. Three real jobs through the queue and worker:

- teacher:           a wider small_cnn (a few hundred thousand params; resnet18 where a
                     GPU is at hand: --teacher resnet18) trained on the labels;
- student alone:     small_cnn width 1 (<100k params), trained on the labels;
- student distilled: the same student, same epochs and augmentation, distilled from the
                     teacher (Hinton KD mixed with the labels, alpha 0.7), with the
                     default teacher outputs (`auto`: 4 cached augmented views per
                     image, replayed over the epochs);
- with --live-too:   the same distillation with a teacher pass every step (`live`), to
                     see what the cached views cost or gain.

Published anchors (test accuracy): two conv layers + pooling 0.916, with batch norm 0.934,
ResNet18 0.949, WRN-40-4 0.967. Goal: the distilled student above 0.92.

    python -m bench.fashion_kd                      # the full run (about 40 min on 2 cores)
    python -m bench.fashion_kd --live-too           # and a live-teacher distillation
    python -m bench.fashion_kd --subset 6000 --teacher-epochs 2 --epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.harness import Harness, machine

log = logging.getLogger("bench.fashion_kd")

DEBIAN_FILES = Path("/usr/share/datasets/fashion-mnist")


def ensure_fashion_mnist(root: Path) -> None:
    """Put Debian's Fashion-MNIST files, un-gzipped, where torchvision reads them."""
    raw = root / "FashionMNIST" / "raw"
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    if all((raw / n).exists() for n in names):
        return
    if not DEBIAN_FILES.exists():
        raise SystemExit(
            f"Fashion-MNIST is not under {raw} and {DEBIAN_FILES} is missing: "
            "apt-get install dataset-fashion-mnist"
        )
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        with gzip.open(DEBIAN_FILES / f"{n}.gz") as src, open(raw / n, "wb") as dst:
            shutil.copyfileobj(src, dst)


def run(
    *,
    teacher: str = "small_cnn",
    teacher_width: float = 2.0,
    teacher_epochs: int = 12,
    epochs: int = 12,
    subset: int | None = None,
    device: str = "cpu",
    live_too: bool = False,
) -> dict[str, Any]:
    h = Harness()
    from app.config import get_settings

    ensure_fashion_mnist(get_settings().data_root)
    train = {"name": "torchvision:FashionMNIST"}
    if subset:
        train["samples_per_class"] = subset // 10
    evaluate = {"dataset": {"name": "torchvision:FashionMNIST", "split": "test"}}
    recipe = {"batch_size": 128, "augment": "flip_crop", "optimizer": {"lr": 3e-3}}
    teacher_model: dict[str, Any] = {"arch": teacher}
    if teacher == "small_cnn":
        teacher_model["width"] = teacher_width
    t = h.run(
        {
            "kind": "train",
            "name": "fashion-teacher",
            "model": teacher_model,
            "train": {"dataset": train, "epochs": teacher_epochs, **recipe},
            "evaluate": evaluate,
        },
        device=device,
    )
    log.info("teacher: %s", t["metrics"])
    student = {"arch": "small_cnn", "width": 1.0}
    alone = h.run(
        {
            "kind": "train",
            "name": "fashion-student",
            "model": student,
            "train": {"dataset": train, "epochs": epochs, **recipe},
            "evaluate": evaluate,
        },
        device=device,
    )
    log.info("student alone: %s", alone["metrics"])

    def distill(teacher_outputs: str) -> dict[str, Any]:
        return h.run(
            {
                "kind": "distill",
                "name": f"fashion-kd-{teacher_outputs}",
                "teacher": {"source": "model", "model_id": t["model_id"]},
                "student": student,
                "distill": {
                    "dataset": train,
                    "epochs": epochs,
                    **recipe,
                    "loss": {"type": "kl", "temperature": 4.0, "alpha": 0.7},
                    "teacher_outputs": teacher_outputs,
                },
                "evaluate": evaluate,
            },
            device=device,
        )

    distilled = distill("auto")
    log.info("student distilled: %s", distilled["metrics"])
    extra: dict[str, Any] = {}
    if live_too:
        live = distill("live")
        log.info("student distilled, live teacher: %s", live["metrics"])
        extra["student_distilled_live"] = {
            "accuracy": live["metrics"]["accuracy"],
            "seconds": live["seconds"],
        }
    report = distilled["report"]
    return {
        "benchmark": "fashion_kd",
        "train_images": subset or 60000,
        "teacher": {
            "arch": teacher,
            "width": teacher_width if teacher == "small_cnn" else None,
            "params": report["teacher"]["params"],
            "epochs": teacher_epochs,
            "accuracy": t["metrics"]["accuracy"],
            "seconds": t["seconds"],
        },
        "student_alone": {
            "params": report["student"]["params"],
            "epochs": epochs,
            "accuracy": alone["metrics"]["accuracy"],
            "seconds": alone["seconds"],
        },
        "student_distilled": {
            "params": report["student"]["params"],
            "epochs": epochs,
            "accuracy": distilled["metrics"]["accuracy"],
            "seconds": distilled["seconds"],
        },
        **extra,
        "kd_gain_points": round(
            100 * (distilled["metrics"]["accuracy"] - alone["metrics"]["accuracy"]), 2
        ),
        "goal_distilled_above_0_92": distilled["metrics"]["accuracy"] > 0.92,
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="small_cnn")
    parser.add_argument("--teacher-width", type=float, default=2.0)
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--subset", type=int, default=None, help="training images (x10 classes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--live-too", action="store_true", help="also distill with a teacher pass every step"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(
        teacher=args.teacher,
        teacher_width=args.teacher_width,
        teacher_epochs=args.teacher_epochs,
        epochs=args.epochs,
        subset=args.subset,
        device=args.device,
        live_too=args.live_too,
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
