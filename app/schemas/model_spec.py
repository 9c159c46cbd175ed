"""The networks a job spec names: where one comes from, and what a student must meet.

`ModelSpec` is a teacher, a student or a fine-tuned network (built fresh, pretrained, an
uploaded checkpoint or an earlier model); `Constraints` and `SizeSearch` are the target's
needs that pick the student's size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from app.schemas.stage_spec import SpecModel, StageSpec


# ----------------------------------------------------------------------------- models
def _model_schema(schema: dict[str, Any]) -> None:
    """OpenAPI for ModelSpec: the fields each `source` needs and allows, as one variant
    per source (what `_fits_source` enforces), and the registered architectures."""
    from app.core.archs import known_archs

    schema["properties"]["arch"] = {
        "anyOf": [{"type": "string", "enum": known_archs()}, {"type": "null"}],
        "description": schema["properties"]["arch"].get("description", ""),
        "default": None,
    }
    variants = []
    for source, needed in _NEEDED_BY_SOURCE.items():
        properties: dict[str, Any] = {"source": {"const": source}}
        for field, owner in _ONLY_FOR_SOURCE.items():
            if owner != source:
                properties[field] = {"type": "null"}  # given only as null, if at all
        for field in needed:
            if field == "arch":
                properties[field] = {"type": "string", "enum": known_archs()}
            elif field != "train":
                properties[field] = {"type": "string"}
            else:
                properties[field] = {"$ref": "#/components/schemas/StageSpec"}
        # A spec without `source` is scratch (the default); every other source is named.
        required = list(needed) if source == "scratch" else ["source", *needed]
        variants.append({"title": source, "properties": properties, "required": required})
    schema["oneOf"] = variants


class ModelSpec(SpecModel):
    """A network: where its weights come from, and its architecture."""

    model_config = ConfigDict(json_schema_extra=_model_schema)

    source: Literal["scratch", "train", "torchvision", "checkpoint", "model"] = Field(
        "scratch",
        description="scratch: random init; train: train `arch` on `train` first; torchvision: "
        "pretrained `weights`; checkpoint: an upload; model: an earlier job's student.",
    )
    arch: str | None = Field(
        None,
        description="A registered architecture: small_cnn (the founding document's student, "
        "scaled by `width`) or any torchvision classification model by its name.",
        examples=["small_cnn", "resnet18"],
        validate_default=True,
    )
    width: float = Field(1.0, gt=0, le=8, description="Channel multiplier (small_cnn).")
    weights: str | None = Field(
        None,
        description="torchvision weights enum name, e.g. IMAGENET1K_V1 (source torchvision).",
        validate_default=True,
    )
    checkpoint_id: str | None = Field(
        None,
        description="source checkpoint: an uploaded checkpoint's id (POST /api/v1/checkpoints).",
        validate_default=True,
    )
    model_id: str | None = Field(
        None, description="source model: an earlier job's model id.", validate_default=True
    )
    train: StageSpec | None = Field(
        None, description="source train: the source-task training.", validate_default=True
    )
    input_size: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Pixels a side the backbone sees; inputs are resized to it. Default: the "
        "data's size, raised to what the architecture needs (32 for torchvision conv nets).",
    )

    @field_validator("arch", "weights", "checkpoint_id", "model_id", "train")
    @classmethod
    def _fits_source(cls, value: Any, info: ValidationInfo) -> Any:
        source = info.data.get("source")
        if source is None:  # the source itself was invalid, and is reported
            return value
        field = info.field_name
        if value is None and field in _NEEDED_BY_SOURCE[source]:
            raise ValueError(f'required when source is "{source}"')
        owner = _ONLY_FOR_SOURCE.get(field or "")
        if value is not None and owner is not None and source != owner:
            raise ValueError(f'applies only to source "{owner}"')
        return value


_NEEDED_BY_SOURCE = {
    "scratch": ("arch",),
    "train": ("arch", "train"),
    "torchvision": ("arch", "weights"),
    "checkpoint": ("checkpoint_id",),
    "model": ("model_id",),
}
_ONLY_FOR_SOURCE = {
    "weights": "torchvision",
    "checkpoint_id": "checkpoint",
    "model_id": "model",
    "train": "train",
}


class Constraints(SpecModel):
    """What the served student must meet; any subset. The budgets (max_*) do not depend on
    the weights: a candidate over one is skipped before it is trained."""

    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Accuracy floor on the evaluation set, 0-1: the smallest candidate (fewest "
        "parameters) at or above it is served. When none reaches it, the most accurate one is "
        "served and the report says constraints_met false.",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Budget on the median batch-1 forward time on the serving device, "
        "milliseconds (the report's latency_ms).",
    )
    max_params: int | None = Field(
        None, ge=1, description="Budget on the number of parameters of the network."
    )
    max_size_bytes: int | None = Field(
        None, ge=1, description="Budget on the size of the student's model.safetensors, bytes."
    )


class SizeSearch(SpecModel):
    """Step 4 of the method: pick the student's size from the target's needs."""

    candidates: list[ModelSpec] = Field(
        min_length=1,
        max_length=16,
        description="The students to choose from (1 to 16), each as a `student` model is "
        "given. Each one within the budgets is distilled, fine-tuned and evaluated.",
    )
    constraints: Constraints = Field(
        default_factory=Constraints,
        description="The needs the choice follows. Without min_accuracy the most accurate "
        "candidate within the budgets is served.",
    )
