"""A finished model's artifacts: model.safetensors, model.json and model.onnx.

The folder is written completely before the database row that points at it exists, and
serving rebuilds the model from these files with the architecture registry alone (or
from model.onnx with ONNX Runtime).

ONNX: the whole `Network` (preprocessing included) is exported with a dynamic batch axis
and fixed C, H, W (model.json `input.shape`), then checked against PyTorch on random
inputs. An export that fails, or that ONNX Runtime cannot run, or whose answers disagree
with PyTorch, leaves no model.onnx; model.json `onnx.error` says why, and the model is
served by PyTorch. A disagreement is logged as an error: it is a bug in the exporter or
in the architecture, never something to serve.

Backends: PyTorch and ONNX Runtime are timed on CPU at batch 1 and 32, and
model.json `backends.preferred` names the faster one, which serving takes by default.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save, save_file

from app.core.archs import count_params
from app.core.files import atomic_write
from app.core.model_format import (
    INPUT_NAME,
    META_FILE,
    MODEL_FORMAT,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    onnx_session,
)
from app.core.network import Network, NetworkConfig
from app.core.safe_json import json_safe

log = logging.getLogger(__name__)

ONNX_OPSET = 17
# ONNX Runtime must agree with PyTorch within atol + rtol * max|logit| on random inputs.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-3
# Batch sizes timed for the backend choice.
TIMED_BATCHES = (1, 32)


@dataclass
class ExportedModel:
    model_id: str
    folder: Path
    meta: dict[str, Any]
    params: int
    size_bytes: int


def model_meta(
    *,
    model_id: str,
    net: Network,
    config: NetworkConfig,
    class_names: list[str],
    metrics: dict[str, Any],
    job_id: str | None,
    name: str | None,
    task: str = "classification",
) -> dict[str, Any]:
    return {
        "format": MODEL_FORMAT,
        "id": model_id,
        "name": name,
        "arch": config.arch,
        "network": config.to_json(),
        # "regression": the outputs are float targets, named in `classes` (target_i).
        "task": task,
        "classes": class_names,
        "num_classes": len(class_names),
        "input": {
            "name": INPUT_NAME,
            "datatype": "FP32",
            "shape": [config.in_channels, config.image_size, config.image_size],
            # Inputs are taken on the training data's scale; the model divides by it.
            "scale": config.scale,
            "range": "0-255" if config.scale == 255.0 else "0-1",
        },
        "normalization": {"mean": config.mean, "std": config.std},
        "params": count_params(net),
        "metrics": metrics,
        "job_id": job_id,
    }


def export_model(
    net: Network,
    config: NetworkConfig,
    *,
    model_id: str,
    folder: Path,
    class_names: list[str],
    metrics: dict[str, Any],
    job_id: str | None,
    name: str | None,
    onnx: bool = True,
    time_backends: bool = True,
    threads: int | None = None,
    task: str = "classification",
) -> ExportedModel:
    """Write model.safetensors, model.onnx (when it exports and checks) and model.json.

    `onnx=False` skips the ONNX file; `time_backends=False` skips the timing (the
    backend choice then falls back to PyTorch). `threads` is the intra-op thread count
    both backends are timed with (default: torch's current setting).
    """
    folder.mkdir(parents=True, exist_ok=True)
    net = cpu_eval(net)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    meta = model_meta(
        model_id=model_id,
        net=net,
        config=config,
        class_names=class_names,
        metrics=metrics,
        job_id=job_id,
        name=name,
        task=task,
    )
    size = (folder / WEIGHTS_FILE).stat().st_size
    meta["size_bytes"] = size
    files = [WEIGHTS_FILE, META_FILE]
    input_shape = meta["input"]["shape"]
    onnx_bytes: bytes | None = None
    if onnx:
        onnx_bytes, meta["onnx"] = export_onnx(net, input_shape, scale=config.scale)
        if onnx_bytes is not None:
            atomic_write(folder / ONNX_FILE, lambda p: p.write_bytes(onnx_bytes))
            files.append(ONNX_FILE)
    else:
        meta["onnx"] = {"error": "ONNX export was not requested"}
    if time_backends:
        meta["backends"] = time_backends_ms(
            net, onnx_bytes, input_shape, scale=config.scale, threads=threads
        )
    else:
        meta["backends"] = {"preferred": "torch", "reason": "backends were not timed"}
    meta["files"] = files
    meta = write_meta(folder, meta)
    return ExportedModel(model_id, folder, meta, meta["params"], size)


def write_meta(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """model.json written whole, atomically; answers what was written. Strict JSON: a NaN
    metric (a diverged loss) becomes null, as in the database."""
    meta = json_safe(meta)
    text = json.dumps(meta, indent=2, allow_nan=False)
    atomic_write(folder / META_FILE, lambda p: p.write_text(text))
    return meta


def weights_file_bytes(net: torch.nn.Module) -> int:
    """The size its model.safetensors would have: the state serialised in memory, header
    included (what `/api/v1/models` reports for a served model)."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return len(save(state))


def cpu_eval(net: Network) -> Network:
    """The network in eval mode on the CPU (a copy when it lives elsewhere)."""
    tensors = list(net.parameters()) + list(net.buffers())
    if any(t.device.type != "cpu" for t in tensors):
        net = copy.deepcopy(net).cpu()
    return net.eval()


def random_inputs(batch: int, input_shape: list[int], *, scale: float, seed: int = 0):
    """Inputs on the model's own scale (0-1 or 0-255), as the served model gets them."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *input_shape, generator=gen) * scale


def export_onnx(
    net: Network, input_shape: list[int], *, scale: float
) -> tuple[bytes | None, dict[str, Any]]:
    """The ONNX graph (or None) and what model.json records about it (`error` if None)."""
    try:
        data = onnx_bytes_of(net, input_shape, scale=scale)
    except Exception as exc:
        # Some torchvision archs use ops the exporter lacks; torch serving still works.
        log.warning("ONNX export failed, serving with torch only: %s", exc)
        return None, {"error": f"export failed: {type(exc).__name__}: {_first_line(exc)}"}
    try:
        max_diff, tolerance = check_onnx(net, data, input_shape, scale=scale)
    except OnnxMismatchError as exc:
        log.error("ONNX export disagrees with PyTorch, not kept: %s", exc)
        return None, {"error": str(exc)}
    except Exception as exc:
        log.warning("ONNX Runtime cannot run the exported graph: %s", exc)
        return None, {
            "error": f"ONNX Runtime cannot run it: {type(exc).__name__}: {_first_line(exc)}"
        }
    return data, {
        "opset": ONNX_OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "size_bytes": len(data),
    }


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def onnx_bytes_of(net: Network, input_shape: list[int], *, scale: float) -> bytes:
    """Export with the TorchScript exporter: it needs no onnxscript and handles every
    registered arch we serve; H and W are fixed, the batch axis is dynamic."""
    buffer = io.BytesIO()
    example = random_inputs(2, input_shape, scale=scale)
    with warnings.catch_warnings():
        # The legacy exporter warns that it is legacy, and the tracer about shape checks
        # in `Network.preprocess` that are constant for fixed H, W.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's answers differ from PyTorch's beyond the tolerance."""


@torch.inference_mode()
def check_onnx(
    net: torch.nn.Module, data: bytes, input_shape: list[int], *, scale: float
) -> tuple[float, float]:
    """(max |diff|, tolerance) over batches of 1 and 3; raises OnnxMismatchError beyond it.

    Two batch sizes, so that a graph whose batch axis was frozen by the tracer fails here
    rather than in serving.
    """
    session = onnx_session(data)
    worst, tolerance = 0.0, 0.0
    for seed, batch in enumerate((1, 3)):
        x = random_inputs(batch, input_shape, scale=scale, seed=seed + 1)
        expected = net(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise OnnxMismatchError(
                f"ONNX output shape {list(got.shape)} != PyTorch {list(expected.shape)}"
            )
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        tol = ONNX_ATOL + ONNX_RTOL * float(np.max(np.abs(expected), initial=0.0))
        if not math.isfinite(diff) or diff > tol:
            raise OnnxMismatchError(
                f"ONNX Runtime disagrees with PyTorch at batch {batch}: "
                f"max |diff| {diff:.3g} > tolerance {tol:.3g}"
            )
        worst, tolerance = max(worst, diff), max(tolerance, tol)
    return worst, tolerance


def median_ms(
    fn: Callable[[], Any], *, min_runs: int = 3, max_runs: int = 30, budget_s: float = 0.3
) -> float:
    """Median wall time of `fn` after two warm-up calls: at least `min_runs`, then more
    until `max_runs` or `budget_s`, so that small models get many runs and big ones few."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def time_backends_ms(
    net: torch.nn.Module,
    onnx_data: bytes | None,
    input_shape: list[int],
    *,
    scale: float,
    threads: int | None = None,
) -> dict[str, Any]:
    """PyTorch and ONNX Runtime on CPU, batch 1 and 32 (median ms); `preferred` is the one
    with the smaller geometric mean of the two ratios (a tie goes to PyTorch)."""
    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        out: dict[str, Any] = {"device": "cpu", "threads": threads, "torch": {}}
        inputs = {b: random_inputs(b, input_shape, scale=scale) for b in TIMED_BATCHES}
        for b, x in inputs.items():
            out["torch"][f"batch_{b}_ms"] = round(median_ms(lambda x=x: net(x)), 4)
        if onnx_data is None:
            out["preferred"] = "torch"
            return out
        session = onnx_session(onnx_data, threads=threads)
        out["onnx"] = {}
        for b, x in inputs.items():
            feed = {INPUT_NAME: x.numpy()}
            out["onnx"][f"batch_{b}_ms"] = round(
                median_ms(lambda feed=feed: session.run([OUTPUT_NAME], feed)), 4
            )
    finally:
        torch.set_num_threads(previous)
    ratios = [
        out["onnx"][f"batch_{b}_ms"] / max(out["torch"][f"batch_{b}_ms"], 1e-6)
        for b in TIMED_BATCHES
    ]
    out["onnx_over_torch"] = round(math.prod(ratios) ** (1 / len(ratios)), 4)
    out["preferred"] = "onnx" if out["onnx_over_torch"] < 1.0 else "torch"
    return out


@torch.inference_mode()
def measure_latency_ms(
    net: torch.nn.Module, input_shape: list[int], *, device: torch.device, runs: int = 50
) -> float:
    """Median wall time of one batch-1 forward pass, after warm-up (milliseconds).

    Puts `net` in eval mode on `device` (callers pass a copy). Timed under
    `inference_mode`, as serving runs it: with autograd recording, small_cnn measured
    1.3x (8x8) to 1.6x (32x32) slower here than it answers."""
    net = net.eval().to(device)
    x = torch.rand(1, *input_shape, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)
