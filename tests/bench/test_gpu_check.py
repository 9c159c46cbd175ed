"""bench/gpu.sh is left ready for a GPU machine; here it runs its whole path on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_with_a_tiny_size(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env["STILLHOUSE_THREADS"] = "1"
    done = subprocess.run(
        [
            str(ROOT / "bench" / "gpu.sh"),
            "--device",
            "cpu",
            "--size",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "64",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["images"] == 128
    assert result["plain_images_per_second"] > 0 and result["ours_images_per_second"] > 0
    assert "plain KD loop:" in done.stdout and "stillhouse:" in done.stdout
