"""int8 students: the exported model.onnx quantized statically, measured against fp32,
and the decision whether serving takes it.

When the spec says `export.int8`, the worker quantizes the student's ONNX graph with ONNX
Runtime's `quantize_static` after `quant_pre_process` (shape inference and graph clean-up):
QDQ format, uint8 activations, per-channel int8 weights (U8S8), activation ranges calibrated
(min-max) on `export.calibration_samples` inputs drawn by the seed from the data the
student learned from (the distill set of a distill or pipeline job, else the training
set). The graph takes inputs on the model's own scale and normalises inside, so the
calibration inputs are the raw images, only brought to the model's channels, size and
scale, exactly as the fp32 graph and serving see them.

Then, beside the fp32 graph and with the worker's thread count: accuracy on the job's
evaluation set (both graphs on the same images), and time at batch 1 and 32 (alternating
fp32 and int8 rounds, medians). The int8 model is served when it loses at most
`export.int8_max_drop` accuracy points and is faster at batch 32 than fp32 would be
served (`serve_decision`). model.json `int8` records the figures and the decision; a
quantization that fails leaves no model.int8.onnx, `int8.error` says why, and the job
still succeeds with its fp32 model.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.datasets import InMemoryData
from app.core.images import resize_images
from app.core.model_format import INPUT_NAME, OUTPUT_NAME, onnx_session
from app.core.network import NetworkConfig
from app.schemas.export import ExportSpec
from worker.export import TIMED_BATCHES, median_ms, random_inputs

log = logging.getLogger(__name__)

# Inputs per ONNX Runtime call when a set is scored, and per calibration batch.
SCORE_BATCH = 256
CALIBRATION_BATCH = 32
# Evaluation images scored at most (a seeded pick from larger sets). Both graphs see the
# same images, so the drop is a paired difference; 10,000 pin it to a fraction of a
# point and keep a 50,000-image set at 224 pixels from costing minutes more.
MAX_EVAL_SAMPLES = 10_000
# Timing: rounds of (fp32, int8) per batch size, each a `median_ms` within this budget
# (seconds); a figure is the median of its rounds. Alternating rounds spread a noisy
# neighbour over both graphs instead of one.
TIMING_ROUNDS = 3
TIMING_BUDGET_S = 0.15
# Activations as unsigned int8 (U8S8 with the signed weights): ONNX Runtime's x86
# kernels are tuned for it. bench/int8.py times signed activations ("QInt8", S8S8) beside
# it: on the 2-core AVX-512 VNNI machine S8S8 ran resnet18 at 0.64x fp32's speed at
# batch 32 where U8S8 ran it at 1.57x, same accuracy (docs/serving.md, "int8 students").
ACTIVATIONS = "QUInt8"
QUANT_FORMAT = "QDQ, uint8 activations (min-max calibration), per-channel int8 weights"
# "Faster" means by at least this factor at batch 32: repeated timings of one graph on a
# shared machine differ by a few percent, and a coin flip is no reason to serve another
# graph.
MIN_SPEEDUP = 1.05


@dataclass
class Int8Result:
    """A quantization's outcome: the int8 graph (None when quantization failed) and what
    model.json records about it under `int8`."""

    data: bytes | None
    block: dict[str, Any]


def model_inputs(
    data: InMemoryData, config: NetworkConfig, rows: torch.Tensor | None = None
) -> np.ndarray | None:
    """`data`'s images (those at `rows`) as the exported graph takes them: float32
    [N, C, H, W] with the model's channels and size, on its scale (a 0-255 set for a 0-1
    model is rescaled, a grey set repeated for an RGB model). None when the channels
    cannot fit (colour images for a grey model)."""
    x = data.x if rows is None else data.x[rows]
    if x.shape[1] != config.in_channels:
        if x.shape[1] != 1:
            return None
        x = x.expand(-1, config.in_channels, -1, -1)
    x = x.float()
    if data.scale != config.scale:
        x = x * (config.scale / data.scale)
    if tuple(x.shape[-2:]) != (config.image_size, config.image_size):
        x = resize_images(x, config.image_size)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def draw_calibration(
    sources: Iterable[InMemoryData], config: NetworkConfig, *, samples: int, seed: int
) -> tuple[np.ndarray, str]:
    """`samples` inputs drawn by `seed` from the first source whose images fit the model,
    and that source's description; ValueError when none fits."""
    for data in sources:
        if len(data) == 0:
            continue
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(data), generator=gen)[:samples]
        x = model_inputs(data, config, rows)
        if x is not None:
            return x, data.description
    raise ValueError(f"no calibration set has images a {config.in_channels}-channel model takes")


class _CalibrationBatches:
    """ONNX Runtime's calibration reader (duck-typed: anything with `get_next`)."""

    def __init__(self, x: np.ndarray) -> None:
        self._batches = iter(
            [
                {INPUT_NAME: x[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(x), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx(fp32: bytes, calibration: np.ndarray, *, activations: str = ACTIVATIONS) -> bytes:
    """The int8 (QDQ) graph of `fp32`, calibrated on `calibration` [N, C, H, W];
    `activations`: ONNX Runtime's QuantType name for them ("QInt8" or "QUInt8")."""
    # Imported on use: the quantizer pulls in `onnx`, which a job without int8 never needs.
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="stillhouse-int8-") as tmp:
        source, prepared, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception as exc:
            # Pre-processing only helps (fused ops, known shapes); quantize without it.
            log.warning("int8: quant_pre_process failed, quantizing as exported: %s", exc)
            prepared = source
        quantize_static(
            str(prepared),
            str(out),
            _CalibrationBatches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=getattr(QuantType, activations),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Min-max adds ReduceMin/ReduceMax outputs to the graph, so calibration holds
            # a few numbers per tensor and batch, not the activations themselves.
            calibrate_method=CalibrationMethod.MinMax,
        )
        return out.read_bytes()


def score(
    fp32: Any, int8: Any, data: InMemoryData, config: NetworkConfig, *, labelled: bool, seed: int
) -> dict[str, Any]:
    """Both sessions on the evaluation set (at most MAX_EVAL_SAMPLES, picked by `seed`):
    top-1 agreement, and each one's accuracy when the labels are the model's classes."""
    n = len(data)
    rows = torch.arange(n)
    if n > MAX_EVAL_SAMPLES:
        gen = torch.Generator().manual_seed(seed)
        rows = torch.sort(torch.randperm(n, generator=gen)[:MAX_EVAL_SAMPLES]).values
    hits = {"fp32": 0, "int8": 0, "agree": 0}
    for chunk in rows.split(SCORE_BATCH):
        x = model_inputs(data, config, chunk)
        if x is None:
            raise ValueError("the evaluation set's images do not fit the model's channels")
        a = fp32.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(1)
        b = int8.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(1)
        hits["agree"] += int((a == b).sum())
        if labelled:
            assert data.y is not None
            y = data.y[chunk].numpy()
            hits["fp32"] += int((a == y).sum())
            hits["int8"] += int((b == y).sum())
    count = max(1, len(rows))
    out: dict[str, Any] = {"eval_samples": len(rows), "agreement": round(hits["agree"] / count, 4)}
    out["accuracy"] = round(hits["int8"] / count, 4) if labelled else None
    out["fp32_accuracy"] = round(hits["fp32"] / count, 4) if labelled else None
    return out


def time_pair_ms(fp32: Any, int8: Any, input_shape: list[int], *, scale: float) -> dict[str, float]:
    """Median ms of both sessions at each of TIMED_BATCHES, in alternating rounds."""
    out: dict[str, float] = {}
    for b in TIMED_BATCHES:
        feed = {INPUT_NAME: random_inputs(b, input_shape, scale=scale).numpy()}
        runs: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(TIMING_ROUNDS):
            for name, session in (("fp32", fp32), ("int8", int8)):
                runs[name].append(
                    median_ms(
                        lambda s=session, f=feed: s.run([OUTPUT_NAME], f), budget_s=TIMING_BUDGET_S
                    )
                )
        out[f"batch_{b}_ms"] = round(statistics.median(runs["int8"]), 4)
        out[f"fp32_batch_{b}_ms"] = round(statistics.median(runs["fp32"]), 4)
    return out


def serve_decision(
    *,
    drop_points: float | None,
    max_drop: float,
    int8_batch_32_ms: float,
    fp32_batch_32_ms: float,
) -> tuple[bool, str]:
    """Whether serving takes the int8 model, and why: it must lose at most `max_drop`
    accuracy points against fp32 and be faster at batch 32 (where a server that batches
    spends its time; at batch 1 both are mostly call overhead), by MIN_SPEEDUP."""
    if drop_points is None:
        return False, "not measured on an evaluation set"
    if drop_points > max_drop:
        return False, f"loses {drop_points:.2f} accuracy points, over int8_max_drop {max_drop:g}"
    if int8_batch_32_ms * MIN_SPEEDUP > fp32_batch_32_ms:
        return False, (
            f"not {MIN_SPEEDUP:g}x faster at batch 32 ({int8_batch_32_ms:.3g} ms against "
            f"fp32's {fp32_batch_32_ms:.3g} ms)"
        )
    return True, (
        f"within int8_max_drop ({drop_points:+.2f} points, at most {max_drop:g}) and "
        f"{fp32_batch_32_ms / max(int8_batch_32_ms, 1e-9):.2f}x faster at batch 32"
    )


def quantize_student(
    onnx_data: bytes,
    config: NetworkConfig,
    *,
    spec: ExportSpec,
    calibration: np.ndarray,
    calibration_source: str,
    eval_data: InMemoryData | None,
    labelled: bool,
    threads: int,
    seed: int = 0,
    torch_batch_32_ms: float | None = None,
) -> Int8Result:
    """Quantize, measure against fp32 and decide (module doc). `torch_batch_32_ms`: the
    export's PyTorch timing; when PyTorch beat fp32 ONNX Runtime there, int8 must beat it
    too. Never raises: a failure is the block's `error`, with no graph."""
    base = {"max_drop": spec.int8_max_drop, "served": False}
    try:
        data = quantize_onnx(onnx_data, calibration)
        int8 = onnx_session(data, threads=threads)
        fp32 = onnx_session(onnx_data, threads=threads)
        shape = [config.in_channels, config.image_size, config.image_size]
        figures = time_pair_ms(fp32, int8, shape, scale=config.scale)
        scores = (
            None
            if eval_data is None
            else score(fp32, int8, eval_data, config, labelled=labelled, seed=seed)
        )
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        log.warning("int8 quantization failed; the fp32 model is served: %r", exc)
        error = f"quantization failed: {type(exc).__name__}: {text}"
        return Int8Result(None, {"error": error, **base})
    block: dict[str, Any] = {"format": QUANT_FORMAT, "max_drop": spec.int8_max_drop}
    drop = None
    if scores is not None:
        block.update(scores)
        if labelled:
            drop = round(100 * (scores["fp32_accuracy"] - scores["accuracy"]), 4)
            block["drop_basis"] = "accuracy"
        else:
            # No labels of the model's classes: a changed top class is the most an
            # accuracy can lose, so the disagreement bounds the drop.
            drop = round(100 * (1 - scores["agreement"]), 4)
            block["drop_basis"] = "disagreement with fp32 (the labels are not its classes)"
    block["drop_points"] = drop
    block.update(figures)
    for b in TIMED_BATCHES:
        block[f"speedup_batch_{b}"] = round(
            figures[f"fp32_batch_{b}_ms"] / max(figures[f"batch_{b}_ms"], 1e-9), 3
        )
    reference, block["compared_with"] = figures["fp32_batch_32_ms"], "onnx"
    if torch_batch_32_ms is not None and torch_batch_32_ms < reference:
        reference, block["compared_with"] = torch_batch_32_ms, "torch"
    block.update(
        size_bytes=len(data),
        fp32_size_bytes=len(onnx_data),
        threads=threads,
        calibration={"samples": len(calibration), "source": calibration_source},
    )
    block["served"], block["reason"] = serve_decision(
        drop_points=drop,
        max_drop=spec.int8_max_drop,
        int8_batch_32_ms=figures["batch_32_ms"],
        fp32_batch_32_ms=reference,
    )
    return Int8Result(data, block)
