"""A job's int8 request (spec `export.int8`): where its calibration inputs come from,
quantizing its student (or each size-search candidate) with worker/quantize.py, and
writing model.int8.onnx and model.json's `int8` block beside the fp32 export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from app.core.archs import count_params
from app.core.datasets import InMemoryData
from app.core.files import atomic_write
from app.core.model_format import INT8_ONNX_FILE, ONNX_FILE
from app.schemas.export import ExportSpec
from app.schemas.job_spec import DistillJobSpec, FinetuneJobSpec, PipelineJobSpec, TrainJobSpec
from app.schemas.model_spec import Constraints
from app.schemas.stage_spec import DatasetRef
from worker.build import Trained, same_classes
from worker.context import JobContext
from worker.export import ExportedModel, cpu_eval, export_onnx, write_meta
from worker.quantize import Int8Result, draw_calibration, quantize_student
from worker.size_search import budget_violation

log = logging.getLogger(__name__)

JobSpec = TrainJobSpec | DistillJobSpec | FinetuneJobSpec | PipelineJobSpec


def calibration_refs(spec: JobSpec) -> list[DatasetRef]:
    """Where calibration inputs come from, in order: what the student learned from (the
    distill set), then the target for a pipeline whose distill set does not fit it."""
    if isinstance(spec, PipelineJobSpec):
        return [spec.distill.dataset, spec.finetune.dataset]
    if isinstance(spec, DistillJobSpec):
        return [spec.distill.dataset]
    if isinstance(spec, TrainJobSpec):
        return [spec.train.dataset]
    return [spec.finetune.dataset]


@dataclass
class Int8Plan:
    """A job's int8 request: its settings, and its calibration sets (loaded on first use)."""

    spec: ExportSpec
    refs: list[DatasetRef]
    load: Callable[[DatasetRef], InMemoryData]
    seed: int
    # Where the API serves models: int8 is an ONNX Runtime graph for the CPU; on a GPU
    # the model is served by PyTorch whatever the int8 figures say.
    serving_device: str = "cpu"
    _sources: list[InMemoryData] = field(default_factory=list, repr=False)

    def sources(self) -> Iterator[InMemoryData]:
        """The calibration sets in order, each loaded when first reached (and kept for
        the next candidate): the first usually fits, and the target set of a pipeline is
        then never loaded a second time."""
        for i, ref in enumerate(self.refs):
            if i == len(self._sources):
                self._sources.append(self.load(ref))
            yield self._sources[i]

    def quantize(
        self,
        trained: Trained,
        onnx_data: bytes | None,
        eval_data: InMemoryData | None,
        *,
        why_no_onnx: str = "",
        torch_batch_32_ms: float | None = None,
    ) -> Int8Result:
        """`trained`'s ONNX graph quantized and measured on `eval_data` (module doc)."""
        base = {"max_drop": self.spec.int8_max_drop, "served": False}
        if trained.task == "regression":
            return Int8Result(None, {"error": "regression targets have no accuracy", **base})
        if onnx_data is None:
            return Int8Result(None, {"error": f"no ONNX graph to quantize: {why_no_onnx}", **base})
        try:
            x, source = draw_calibration(
                self.sources(),
                trained.config,
                samples=self.spec.calibration_samples,
                seed=self.seed,
            )
        except ValueError as exc:
            return Int8Result(None, {"error": str(exc), **base})
        except Exception as exc:
            # Reloading a calibration set can fail late (storage, decoding): the job has
            # its fp32 model either way, and int8 was an extra.
            log.exception("int8: the calibration set could not be loaded")
            return Int8Result(
                None, {"error": f"calibration set not loaded ({type(exc).__name__})", **base}
            )
        result = quantize_student(
            onnx_data,
            trained.config,
            spec=self.spec,
            calibration=x,
            calibration_source=source,
            eval_data=eval_data,
            labelled=eval_data is not None and same_classes(trained, eval_data),
            threads=torch.get_num_threads(),
            seed=self.seed,
            torch_batch_32_ms=torch_batch_32_ms,
        )
        if self.serving_device != "cpu" and result.block.get("served"):
            result.block["served"] = False
            result.block["reason"] = (
                f"the serving device is {self.serving_device}: models are served by "
                "PyTorch there, so the int8 graph is kept but not served"
            )
        return result

    def quantize_network(self, trained: Trained, eval_data: InMemoryData | None) -> Int8Result:
        """Export `trained` to ONNX here and quantize it (a size-search candidate)."""
        config = trained.config
        net = cpu_eval(trained.net)
        shape = [config.in_channels, config.image_size, config.image_size]
        data, info = export_onnx(net, shape, scale=config.scale)
        return self.quantize(trained, data, eval_data, why_no_onnx=info.get("error", ""))

    def budget_violation(self, untrained: Trained, limits: Constraints) -> str | None:
        """Why the int8 form of an untrained candidate breaks a budget (or None): its size
        and latency do not depend on the weights, so it is measured before training."""
        result = self.quantize_network(untrained, None)
        if result.data is None:
            return f"no int8 model ({result.block.get('error')})"
        figures = {
            "params": count_params(untrained.net),
            "size_bytes": result.block["size_bytes"],
            "latency_ms": result.block["batch_1_ms"],
        }
        return budget_violation(figures, limits)


def int8_plan(ctx: JobContext, spec: JobSpec) -> Int8Plan | None:
    """The job's int8 plan (None when its spec did not ask for int8): its calibration
    sets loaded through `ctx`, for the device the API serves on."""
    if not spec.export.int8:
        return None
    return Int8Plan(
        spec.export,
        calibration_refs(spec),
        lambda ref: ctx.load_data(ref, seed=spec.seed),
        spec.seed,
        serving_device=ctx.serving_device.type,
    )


def add_int8(
    plan: Int8Plan,
    exported: ExportedModel,
    trained: Trained,
    eval_data: InMemoryData,
    result: Int8Result | None = None,
) -> Int8Result:
    """Quantize the exported student (unless the size search did already: `result`),
    write model.int8.onnx beside model.onnx and the `int8` block into model.json."""
    meta, folder = exported.meta, exported.folder
    if result is None:
        path = folder / ONNX_FILE
        has_onnx = ONNX_FILE in meta.get("files", []) and path.is_file()
        torch_ms = ((meta.get("backends") or {}).get("torch") or {}).get("batch_32_ms")
        result = plan.quantize(
            trained,
            path.read_bytes() if has_onnx else None,
            eval_data,
            why_no_onnx=(meta.get("onnx") or {}).get("error", "model.onnx is missing"),
            torch_batch_32_ms=torch_ms,
        )
    int8_data = result.data
    if int8_data is not None:
        atomic_write(folder / INT8_ONNX_FILE, lambda p: p.write_bytes(int8_data))
        meta["files"] = [*meta.get("files", []), INT8_ONNX_FILE]
    meta["int8"] = result.block
    exported.meta = write_meta(folder, meta)
    return result
