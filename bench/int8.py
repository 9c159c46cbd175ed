"""int8 students: fp32 ONNX Runtime against the int8 (QDQ) graph, speed and accuracy.

Four real `train` jobs through the queue and worker, each with `export.int8` (so the
worker quantizes, measures and decides as it does for a user):

- small_cnn width 1 and width 0.5 on scikit-learn's digits (8x8 grey);
- small_cnn width 1 on real Fashion-MNIST (28x28 grey, Debian's `dataset-fashion-mnist`
  files, as bench/fashion_kd.py reads them), trained briefly (1 epoch);
- resnet18 on synthetic 32x32 colour images (speed; its accuracy is a sanity check).

Accuracy: the job's own figures (fp32 ONNX and int8 on the evaluation set, the same
images). Speed: this bench loads each model's model.onnx and model.int8.onnx and times
them at batch 1 and 32 in alternating rounds (fp32, int8, fp32, ...), each round the
median of a burst of calls; a figure is the median over rounds, so a noisy neighbour on
this shared machine lands on all graphs. Printed as images per second and int8/fp32
ratios, beside the worker's serve decision.

Beside the served int8 graph (U8S8: unsigned int8 activations, signed int8 weights, what
the worker makes: the layout ONNX Runtime's x86 kernels are tuned for), the bench
quantizes model.onnx once more with signed activations (S8S8), on the same calibration
draw, and measures it the same way (`s8s8`): the evidence for the worker's choice.

    python -m bench.int8            # about 2 minutes on 2 cores
    python -m bench.int8 --quick    # a smoke run: fewer images, fewer rounds (under a minute)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.fashion_kd import ensure_fashion_mnist
from bench.harness import Harness, machine

log = logging.getLogger("bench.int8")

BATCHES = (1, 32)


def jobs(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, train spec) of each measured model."""
    export = {"int8": True, "int8_max_drop": 0.5, "calibration_samples": 256}
    fashion: dict[str, Any] = {"name": "torchvision:FashionMNIST"}
    if quick:
        fashion["samples_per_class"] = 300
    synthetic = {"name": "synthetic", "num_samples": 512 if quick else 2000, "seed": 1}

    def train(model: dict[str, Any], dataset: dict[str, Any], epochs: int, **extra: Any):
        return {
            "kind": "train",
            "model": model,
            "train": {
                "dataset": dataset,
                "epochs": epochs,
                "min_steps": 0,
                "batch_size": 64,
                **extra,
            },
            "export": export,
        }

    return [
        ("small_cnn w1 digits", train({"arch": "small_cnn"}, {"name": "digits"}, 4)),
        (
            "small_cnn w0.5 digits",
            train({"arch": "small_cnn", "width": 0.5}, {"name": "digits"}, 4),
        ),
        (
            "small_cnn w1 fashion",
            {
                **train({"arch": "small_cnn"}, fashion, 1, batch_size=128),
                "evaluate": {"dataset": {"name": "torchvision:FashionMNIST", "split": "test"}},
            },
        ),
        (
            "resnet18 synthetic 32x32x3",
            {
                **train({"arch": "resnet18"}, synthetic, 1, augment="none"),
                "evaluate": {
                    "dataset": {"name": "synthetic", "split": "test", "num_samples": 500, "seed": 1}
                },
            },
        ),
    ]


def s8s8_variant(folder: Path, spec: dict[str, Any], *, threads: int) -> tuple[bytes, float]:
    """model.onnx quantized with signed activations on the job's calibration draw, and
    its accuracy on the job's evaluation set."""
    from app.config import get_settings
    from app.core.model_format import onnx_session
    from app.core.network import NetworkConfig
    from app.schemas.job_spec import default_evaluate
    from app.schemas.stage_spec import DatasetRef
    from worker.data import load_dataset
    from worker.quantize import draw_calibration, quantize_onnx, score

    meta = json.loads((folder / "model.json").read_text())
    config = NetworkConfig.from_json(meta["network"])
    root = get_settings().data_root
    train_ref = DatasetRef(**spec["train"]["dataset"])
    eval_ref = (
        DatasetRef(**spec["evaluate"]["dataset"])
        if "evaluate" in spec
        else default_evaluate(train_ref).dataset
    )
    calibration, _ = draw_calibration(
        [load_dataset(train_ref, data_root=root, seed=0)],
        config,
        samples=spec["export"]["calibration_samples"],
        seed=0,
    )
    fp32 = (folder / "model.onnx").read_bytes()
    other = quantize_onnx(fp32, calibration, activations="QInt8")
    scores = score(
        onnx_session(fp32, threads=threads),
        onnx_session(other, threads=threads),
        load_dataset(eval_ref, data_root=root, seed=0),
        config,
        labelled=True,
        seed=0,
    )
    return other, scores["accuracy"]


def throughput(
    folder: Path, s8s8: bytes, *, threads: int, rounds: int, burst_s: float
) -> dict[str, Any]:
    """Images per second of model.onnx, model.int8.onnx and the S8S8 variant at each
    batch size, timed in alternating rounds (median of each round's calls, median over
    rounds)."""
    from app.core.model_format import INPUT_NAME, OUTPUT_NAME, onnx_session

    meta = json.loads((folder / "model.json").read_text())
    shape, scale = meta["input"]["shape"], meta["input"]["scale"]
    sessions = {
        "fp32": onnx_session(str(folder / "model.onnx"), threads=threads),
        "int8": onnx_session(str(folder / "model.int8.onnx"), threads=threads),
        "s8s8": onnx_session(s8s8, threads=threads),
    }
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for b in BATCHES:
        feed = {INPUT_NAME: (rng.random((b, *shape), dtype=np.float32) * scale)}
        medians: dict[str, list[float]] = {name: [] for name in sessions}
        for session in sessions.values():  # warm-up
            for _ in range(3):
                session.run([OUTPUT_NAME], feed)
        for _ in range(rounds):
            for name, session in sessions.items():
                calls: list[float] = []
                start = time.perf_counter()
                while len(calls) < 5 or time.perf_counter() - start < burst_s:
                    t0 = time.perf_counter()
                    session.run([OUTPUT_NAME], feed)
                    calls.append(time.perf_counter() - t0)
                medians[name].append(statistics.median(calls))
        fp32, int8, u8 = (statistics.median(medians[n]) for n in ("fp32", "int8", "s8s8"))
        out[f"batch_{b}"] = {
            "fp32_images_per_s": round(b / fp32, 1),
            "int8_images_per_s": round(b / int8, 1),
            "int8_speedup": round(fp32 / int8, 3),
            "s8s8_speedup": round(fp32 / u8, 3),
        }
    return out


def run(*, quick: bool, threads: int) -> dict[str, Any]:
    h = Harness(threads=threads)
    from app.config import get_settings

    settings = get_settings()
    try:
        ensure_fashion_mnist(settings.data_root)
        fashion = True
    except SystemExit as missing:
        # `make bench` runs this too: without Debian's files, the other models still run.
        log.warning("skipping the Fashion-MNIST model: %s", missing)
        fashion = False
    results = []
    for label, spec in jobs(quick):
        if "fashion" in label and not fashion:
            continue
        job = h.run({**spec, "name": label})
        folder = settings.artifact_dir / "models" / job["model_id"]
        int8 = json.loads((folder / "model.json").read_text())["int8"]
        if int8.get("error"):
            raise RuntimeError(f"{label}: no int8 model: {int8['error']}")
        log.info("%s: trained and quantized in %.1f s", label, job["seconds"])
        s8s8, s8s8_accuracy = s8s8_variant(folder, spec, threads=threads)
        speed = throughput(
            folder, s8s8, threads=threads, rounds=3 if quick else 7, burst_s=0.1 if quick else 0.2
        )
        results.append(
            {
                "model": label,
                "fp32_accuracy": int8["fp32_accuracy"],
                "int8_accuracy": int8["accuracy"],
                "drop_points": int8["drop_points"],
                "s8s8_accuracy": s8s8_accuracy,
                "eval_samples": int8["eval_samples"],
                "size_ratio": round(int8["size_bytes"] / int8["fp32_size_bytes"], 3),
                **speed,
                "worker_speedup_batch_32": int8["speedup_batch_32"],
                "served": int8["served"],
                "reason": int8["reason"],
                "job_seconds": job["seconds"],
            }
        )
    return {"benchmark": "int8", "quick": quick, "models": results, **machine()}


def cpu_flags() -> list[str]:
    """The CPU's int8 dot-product extensions (what int8 speed hangs on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return [flag for flag in wanted if f" {flag}" in text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and timing rounds")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (serving's default here: 1)"
    )
    args = parser.parse_args()
    # ONNX Runtime's quantizer logs its progress on the root logger: warnings only there,
    # this bench's own lines at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    result = run(quick=args.quick, threads=args.threads)
    result["cpu_flags"] = cpu_flags()
    for m in result["models"]:
        log.info(
            "%-26s acc fp32 %.4f int8 %.4f (%+.2f pts) s8s8 %.4f | int8/fp32 speed b1 x%.2f "
            "b32 x%.2f (s8s8 b1 x%.2f b32 x%.2f) | size x%.2f | %s",
            m["model"],
            m["fp32_accuracy"],
            m["int8_accuracy"],
            0.0 - m["drop_points"],
            m["s8s8_accuracy"],
            m["batch_1"]["int8_speedup"],
            m["batch_32"]["int8_speedup"],
            m["batch_1"]["s8s8_speedup"],
            m["batch_32"]["s8s8_speedup"],
            m["size_ratio"],
            "served" if m["served"] else "not served",
        )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
