"""The parts of a job spec that say how to fit a network: datasets, stages, losses.

Everything in a job spec is data checked by pydantic: unknown fields are refused (through
`SpecModel`), every number has its range. The job kinds that put these parts together are
in `app.schemas.job_spec`; the networks they fit, in `app.schemas.model_spec`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class SpecModel(BaseModel):
    # Python's JSON reader takes Infinity and NaN, and JSON strings may hold NUL; Postgres
    # refuses all three in the stored spec (a 500 at submission), so they stop here, with
    # the field's name.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and "\x00" in item for item in items):
            raise ValueError("must not contain NUL characters")
        return value


# ---------------------------------------------------------------------------- datasets
class DatasetRef(SpecModel):
    """A dataset by registry name or by uploaded id, with optional filters."""

    id: str | None = Field(None, description="An uploaded dataset's id (POST /api/v1/datasets).")
    name: str | None = Field(
        None,
        description='"digits", "synthetic" or "torchvision:<Name>" (e.g. torchvision:FashionMNIST)',
        examples=["digits"],
        validate_default=True,
    )
    classes: list[int | str] | None = Field(
        None,
        description="Keep only these classes (indices or names), relabelled 0..k-1 in this order.",
        min_length=1,
    )
    samples_per_class: int | None = Field(
        None, ge=1, description="Keep at most this many samples per class (chosen by the seed)."
    )
    split: Literal["train", "test", "all"] = Field(
        "train",
        description="train or test; all is both. An upload is split like digits: in each "
        "class every fifth sample is test.",
    )
    image_size: int | None = Field(
        None, ge=8, le=224, description="Resize images to this many pixels a side."
    )
    labels: bool = Field(
        True, description="Use the labels; false treats the set as unlabelled (distillation)."
    )
    # Only for "synthetic": procedural images, deterministic by seed.
    num_classes: int | None = Field(None, ge=2, le=1000, description="synthetic only")
    channels: Literal[1, 3] | None = Field(None, description="synthetic only")
    num_samples: int | None = Field(
        None, ge=1, le=10_000_000, description="synthetic only: samples in this split"
    )
    seed: int | None = Field(None, ge=0, description="synthetic only: generator seed")

    # Field validators (not a model validator) so that errors name the field at fault.
    @field_validator("name")
    @classmethod
    def _name_or_id(cls, name: str | None, info: ValidationInfo) -> str | None:
        has_id = info.data.get("id") is not None
        if name is None and not has_id:
            raise ValueError('give a dataset "name" (or an uploaded dataset\'s "id")')
        if name is not None and has_id:
            raise ValueError('give "name" or "id", not both')
        return name

    @field_validator("num_classes", "channels", "num_samples", "seed")
    @classmethod
    def _synthetic_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("name") != "synthetic":
            raise ValueError("applies only to the synthetic dataset")
        return value


# --------------------------------------------------------------------------- training
# Per-optimiser defaults of the peak learning rate and weight decay for a network trained
# from scratch, chosen by the sweep in docs/benchmarks.md ("Schedule defaults") over 50 to
# 60,000 training images; a network with weights (fine-tuning) takes FINETUNE_LR_SHARE of
# the rate, which keeps what it knows (worker/schedule.py fills them in per stage).
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float]] = {
    "adamw": (5e-3, 0.05),
    "adam": (1e-3, 0.0),
    "sgd": (0.05, 5e-4),
}
FINETUNE_LR_SHARE = 0.2


class OptimizerSpec(SpecModel):
    """The optimiser of one stage."""

    name: Literal["sgd", "adam", "adamw"] = Field(
        "adamw",
        description="sgd (Nesterov momentum when momentum > 0), adam, or adamw (decoupled "
        "weight decay).",
    )
    lr: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Peak learning rate. Unset: the optimiser's default for a network from "
        "scratch (adamw 5e-3, adam 1e-3, sgd 0.05), a fifth of it when fine-tuning a network "
        "that has weights; the stage's start event says which.",
    )
    weight_decay: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Decoupled for adamw, L2 for sgd and adam. Unset: the optimiser's default "
        "(adamw 0.05, adam 0, sgd 5e-4).",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only (Nesterov).")


class SchedulerSpec(SpecModel):
    name: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine decays the lr to 0 over the stage, per step."
    )
    warmup_epochs: float | None = Field(
        None,
        ge=0,
        description="Linear warm-up from 0 (epochs). Unset: the first 5% of the stage's "
        "steps, which keeps a high default learning rate from throwing a fresh network off "
        "in its first steps; 0: none.",
    )


# The warm-up when the spec gives none: this share of the stage's steps.
DEFAULT_WARMUP_SHARE = 0.05

# A stage's length and batch when the spec gives only epochs (worker/schedule.py): the
# batch never exceeds a quarter of the set, and a stage takes at least MIN_STEPS steps.
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 64
MIN_STEPS = 300


class StageSpec(SpecModel):
    """One fit: a dataset, how long, how big a batch, how to step."""

    dataset: DatasetRef = Field(
        description="The data the stage fits on: a built-in set by name or an upload by id "
        "(its train split unless `split` says otherwise)."
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Passes over the dataset (raised so that the stage takes at least "
        "`min_steps` optimiser steps). Unset: `steps` if given, else 10.",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="The stage's length in optimiser steps instead of epochs (give one of "
        "the two).",
    )
    min_steps: int = Field(
        MIN_STEPS,
        ge=0,
        le=1_000_000,
        description="With `epochs`: at least this many optimiser steps, so that a few epochs "
        "of a tiny set still train (0: exactly `epochs`).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Samples per optimiser step, at most: an epoch's batches are made as "
        "equal as they can be (50 images at 12: five of 10, not four of 12 and one of 2, "
        "which batch norm cannot use). Unset: 64, but at most a quarter of the stage's data "
        "(12 for 50 images), so a small set gets several steps an epoch.",
    )
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec,
        description="Which optimiser, its peak learning rate and its weight decay.",
    )
    scheduler: SchedulerSpec = Field(
        default_factory=SchedulerSpec,
        description="How the learning rate moves over the stage (warm-up, then constant or "
        "cosine decay).",
    )
    augment: Literal["auto", "none", "flip", "crop", "flip_crop"] = Field(
        "auto",
        description="Random augmentation, applied to tensors in batch. auto: by the data's "
        "kind: flip_crop for colour (natural) images; none for grey ones (digits, text: a "
        "flip makes another symbol), but crop when training a teacher (on its source task, "
        "or a pipeline's teacher_finetune on the target); "
        "none for regression targets.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the cross-entropy on class labels, 0 (none) to below 1. "
        "Training and fine-tuning use it; a distill stage's hard-label term does not.",
    )
    eval_every: int = Field(
        1, ge=0, description="Evaluate every this many epochs (0: the last epoch only)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU, fp32 on a CPU."
    )
    compile: bool = Field(
        False, description="torch.compile the network for this stage (pays off on long GPU runs)."
    )

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        if self.epochs is None and self.steps is None:
            # Filled here, so the stored spec (and the API's answer) shows it.
            self.epochs = DEFAULT_EPOCHS
        return self


# ------------------------------------------------------------------------ distillation
def _registered_losses(schema: dict[str, Any]) -> None:
    """The loss names, as OpenAPI's enum. Read from the registry when the schema is
    generated, not when this module is imported: the contract imports no torch."""
    from app.core.losses import known_losses

    schema["enum"] = known_losses()


class DistillLossSpec(SpecModel):
    type: str = Field(
        "kl",
        description="A name from the loss registry (app/core/losses.py), checked at "
        "submission. mse: E||f(x)-g(x)||^2 on logits; kl: Hinton soft targets; hint: FitNets "
        "feature regression through a learned adapter, plus the kl term; dkd: decoupled KD "
        "(dkd_alpha * target-class KL + dkd_beta * non-target-class KL; the target class is "
        "the label where labels are the teacher's classes, else the teacher's top class); "
        "dist: DIST, Pearson correlation of student and teacher probabilities within each "
        "sample (dist_beta) and each class (dist_gamma).",
        json_schema_extra=_registered_losses,
    )
    temperature: float = Field(
        4.0, gt=0, le=100, description="Softmax temperature T (kl, hint, dkd, dist)."
    )
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the distillation term; 1 - alpha goes to the hard-label loss "
        "where labels exist.",
    )
    hint_weight: float = Field(1.0, ge=0, description="hint: weight of the feature term.")
    student_layer: str | None = Field(None, description="hint: student module name.")
    teacher_layer: str | None = Field(None, description="hint: teacher module name.")
    dkd_alpha: float = Field(
        1.0, ge=0, description="dkd: weight of TCKD, the target-vs-rest KL (paper: 1)."
    )
    dkd_beta: float = Field(
        8.0, ge=0, description="dkd: weight of NCKD, the KL over non-target classes (paper: 8)."
    )
    dist_beta: float = Field(
        1.0, ge=0, description="dist: weight of the inter-class relation, per sample (paper: 1)."
    )
    dist_gamma: float = Field(
        1.0, ge=0, description="dist: weight of the intra-class relation, per class (paper: 1)."
    )


class DistillStage(StageSpec):
    """Training the student to match the teacher on `dataset` (labels optional)."""

    loss: DistillLossSpec = Field(
        default_factory=DistillLossSpec,
        description="How the student's outputs are matched to the teacher's: mse, kl (soft "
        "targets), hint (feature regression), dkd (decoupled KD) or dist (probability "
        "correlations), with their weights.",
    )
    teacher_outputs: Literal["auto", "cache", "views", "live"] = Field(
        "auto",
        description="cache: the teacher's outputs computed once, reused every epoch (needs "
        "augment none); views: `teacher_views` fixed augmented views per sample, each with "
        "cached outputs (FKD); live: a teacher pass every step. auto: cache without "
        "augmentation; with it, views when teacher_views < epochs, else live.",
    )
    teacher_views: int = Field(
        4, ge=1, le=64, description="views: augmented views cached per sample."
    )
    mixup: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mix pairs of distill images (mixup, Zhang et al. 2018) with a weight "
        "drawn from Beta(mixup, mixup); teacher and student see the same mixed image (Beyer "
        "et al. 2022's function matching), so it needs a live teacher. 0: off; 1 is usual.",
    )

    @model_validator(mode="after")
    def _outputs_fit_augment(self) -> DistillStage:
        if self.teacher_outputs == "cache" and self.augment not in ("none", "auto"):
            raise ValueError('teacher_outputs "cache" needs augment "none" (use "views" or "live")')
        if self.teacher_outputs == "views" and self.augment == "none":
            raise ValueError('teacher_outputs "views" needs an augment other than "none"')
        if self.mixup > 0 and self.teacher_outputs in ("cache", "views"):
            raise ValueError(
                f'mixup needs teacher_outputs "live" or "auto" (a mixed image has no cached '
                f'output), not "{self.teacher_outputs}"'
            )
        return self


class FinetuneStage(StageSpec):
    loss: Literal["auto", "cross_entropy", "mse"] = Field(
        "auto",
        description="L_T. auto: cross-entropy for classes, the squared error for regression "
        "targets; mse on classes: the squared error to one-hot targets.",
    )
    kd_weight: float = Field(
        0.0, ge=0, le=1, description="Weight of a distillation term from the teacher."
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Temperature of the kd term.")
    freeze_backbone_epochs: int = Field(
        0, ge=0, description="Train only the new head for this many first epochs."
    )


class EvaluateSpec(SpecModel):
    """The set the finished networks are measured on."""

    dataset: DatasetRef = Field(
        description="The evaluation set; its `split` defaults to train like any dataset "
        "reference, so name `test` for the holdout."
    )
