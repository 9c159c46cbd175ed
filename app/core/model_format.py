"""A finished model's files, as the worker writes them and serving reads them.

A model folder holds `model.safetensors` (the Network's state), `model.json` (the
`NetworkConfig` under `network`, classes, input shape and scale, normalisation,
metrics, the ONNX check and backend timings) and, when its export checked out,
`model.onnx`; a job that asked for int8 (spec `export.int8`) adds `model.int8.onnx`, its
static quantization, when that succeeded (model.json `int8`). The names below are shared by the exporter, the serving backends and the
Open Inference Protocol metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FORMAT = "stillhouse.model/v1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ONNX_FILE = "model.onnx"
# The int8 (QDQ) quantization of model.onnx, when the job asked for it (worker/quantize.py).
INT8_ONNX_FILE = "model.int8.onnx"
# Name of the input tensor, in model.json, the ONNX graph and the V2 metadata.
INPUT_NAME = "input"
# Name of the ONNX graph's output (and of the V2 output tensor).
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class StoredModel:
    """A finished model as stored: its id, its folder of files and its model.json."""

    id: str
    folder: Path
    meta: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_FILE


def model_folder(artifact_dir: Path, artifact_path: str) -> Path:
    """A model's folder: `artifact_path` (as its database row records it) under the
    artifact dir, which it must not leave. ValueError for a path that does."""
    root = artifact_dir.resolve()
    folder = (root / artifact_path).resolve()
    if folder == root or root not in folder.parents:
        raise ValueError(f"artifact path {artifact_path!r} lies outside the artifact store")
    return folder


def onnx_session(model: bytes | str, *, threads: int = 1) -> Any:
    """An ONNX Runtime session on the CPU with `threads` intra-op threads.

    One inter-op thread: a model runs one batch at a time (the batcher serialises calls,
    the exporter times one call after another)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
