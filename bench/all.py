"""`make bench`: the short benchmark set, ending with one JSON line of the key figures.

Each part runs its hand-written baseline beside ours in the same process run (see each
module). Sized for a 2-core machine: under 10 minutes. The full runs (digits transfer
over 3 seeds, Fashion-MNIST KD, the GPU check) are separate: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import int8, serving, submit_latency, train_speed
from bench.harness import machine

log = logging.getLogger("bench.all")

RESULTS = Path("bench/results")


def run(quick: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {}
    speed = train_speed.run(quick=quick)
    out.update({k: v for k, v in speed.items() if k.startswith(("train_", "distill_"))})
    serve = serving.run(quick=True)
    out["batching_gain"] = serve["batching_gain"]
    out["serving"] = {k: v for k, v in serve.items() if k != "batching_gain"}
    # int8 students (issue 12): int8 / fp32 speed at batch 32 and the accuracy cost.
    quantized = int8.run(quick=True, threads=1)
    out["int8"] = {
        m["model"]: {
            "speedup_batch_32": m["batch_32"]["int8_speedup"],
            "drop_points": m["drop_points"],
            "served": m["served"],
        }
        for m in quantized["models"]
    }
    latency = submit_latency.run(quick=True)
    out["submit_to_running"] = latency
    out.update(machine())
    # machine() reads the current torch thread count, which the serving part changed.
    out["threads"] = out["train_threads"]
    out["bench_seconds"] = round(time.perf_counter() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller training figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("alembic", "app", "worker", "httpx", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(quick=args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    keys = (
        "train_overhead",
        "distill_speedup",
        "distill_speedup_of_means",
        "distill_ours_accuracy",
        "distill_plain_accuracy",
        "distill_heavy_teacher_speedup",
        "batching_gain",
        "machine",
        "gpu",
        "torch",
        "train_threads",
        "date",
    )
    headline = {k: result[k] for k in keys}
    sys.stdout.write(json.dumps(headline) + "\n")


if __name__ == "__main__":
    main()
