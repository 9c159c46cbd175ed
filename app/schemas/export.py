"""The job spec's `export` object: how the finished student is exported beyond fp32.

Today that is int8: the worker quantizes model.onnx with ONNX Runtime's static
quantization (QDQ, uint8 activations and per-channel int8 weights), measures it beside
the fp32 graph, and serving takes it when it is faster and within the accuracy budget
(docs/serving.md, "int8 students"). Regression targets have no accuracy to budget, so
the submission check refuses `int8` for them (app/services/spec_check.py).
"""

from __future__ import annotations

from pydantic import Field

from app.schemas.stage_spec import SpecModel

# Defaults, named for the docs and the worker.
DEFAULT_INT8_MAX_DROP = 0.5
DEFAULT_CALIBRATION_SAMPLES = 256


class ExportSpec(SpecModel):
    """What the finished student is exported as, besides safetensors and fp32 ONNX."""

    int8: bool = Field(
        False,
        description="Also quantize the student to int8 (model.int8.onnx, ONNX Runtime static "
        "quantization, calibrated on the data it learned from) and measure it against fp32; "
        "served instead of fp32 when within `int8_max_drop` and faster at batch 32. "
        "Classification only.",
    )
    int8_max_drop: float = Field(
        DEFAULT_INT8_MAX_DROP,
        ge=0,
        le=100,
        description="Accuracy points (0-100 scale) the int8 model may lose against fp32 on "
        "the evaluation set and still be served (0.5: 0.921 -> 0.916 is within).",
    )
    calibration_samples: int = Field(
        DEFAULT_CALIBRATION_SAMPLES,
        ge=1,
        le=10_000,
        description="Inputs the quantizer measures activation ranges on, drawn by the seed "
        "from the distill set (distill and pipeline jobs) or the training set.",
    )
