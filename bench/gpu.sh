#!/usr/bin/env bash
# The GPU check of issue 5, in one self-contained call: KD images/s, plain loop vs ours,
# on 50,000 synthetic 3x32x32 images with a resnet18 teacher and a small_cnn student.
# Extra arguments go to bench/gpu.py (e.g. --device cpu --size 512 to try it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import app, torch" 2>/dev/null; then
    "$PY" -m pip install -q -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" -m bench.gpu "$@"
