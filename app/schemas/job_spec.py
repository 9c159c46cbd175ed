"""The job spec: what a user submits, shared by the API (validation) and the worker (execution).

The four job kinds, each put together from the parts in `app.schemas.stage_spec` (datasets,
stages, losses) and `app.schemas.model_spec` (the networks). Everything is data checked by
pydantic: unknown fields are refused, every number has its range. Checks that need a registry or the database (an unknown architecture, a class
the dataset lacks, another owner's upload) live in `app.services.spec_check`, which runs
at submission so that a bad spec never reaches a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.schemas.export import ExportSpec
from app.schemas.model_spec import ModelSpec, SizeSearch
from app.schemas.resources import Resources
from app.schemas.stage_spec import (
    DatasetRef,
    DistillStage,
    EvaluateSpec,
    FinetuneStage,
    SpecModel,
    StageSpec,
)


# ---------------------------------------------------------------------------- job kinds
class JobSpecBase(SpecModel):
    name: str | None = Field(
        None,
        max_length=200,
        description="A name for people: shown in lists, and given to the finished model.",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seeds every random choice (initial weights, sample picks, shuffling, "
        "augmentation): the same spec and seed give the same result on a CPU.",
    )
    max_attempts: int | None = Field(
        None, ge=1, le=20, description="Tries before a job whose worker keeps dying is FAILED."
    )
    evaluate: EvaluateSpec | None = Field(
        None,
        description="Evaluation set; default: the target's test split. When it is another "
        "dataset than the target, both are used whole (an unset `split` becomes all): the "
        "target holds back no labels that nothing measures.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="What a worker must have to claim the job: `gpus` and `labels` (see "
        "GET /api/v1/workers). While no live worker has them the job stays QUEUED and its "
        "`waiting_reason` says so.",
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec,
        description="How the student is exported besides fp32: `int8` also quantizes it "
        "and serves the int8 model when it is faster and within `int8_max_drop`.",
    )

    def target_stage(self) -> StageSpec | None:
        """The stage that fits the labelled target (None for a distill job)."""
        return None

    @model_validator(mode="after")
    def _whole_sets_when_measured_elsewhere(self) -> JobSpecBase:
        # A small upload loses every fifth sample to the holdout (8 of 10 images a class
        # remain). When the evaluation set is another dataset than the target, nothing
        # uses the target's holdout, and the evaluation set is meant whole: both unset
        # splits become "all".
        stage = self.target_stage()
        if stage is None or self.evaluate is None:
            return self
        target, measured = stage.dataset, self.evaluate.dataset
        if (target.id, target.name) == (measured.id, measured.name):
            return self
        if "split" not in target.model_fields_set:
            stage.dataset = target.model_copy(update={"split": "all"})
        if "split" not in measured.model_fields_set:
            self.evaluate.dataset = measured.model_copy(update={"split": "all"})
        return self


class TrainJobSpec(JobSpecBase):
    """Supervised training of one network, from scratch or from pretrained weights."""

    kind: Literal["train"] = Field(description="train: supervised training of `model`.")
    model: ModelSpec = Field(
        description="The network to train: a fresh one (scratch) or one with weights "
        "(torchvision, checkpoint, model); source train is for teachers only."
    )
    train: StageSpec = Field(description="The training: dataset, epochs, optimiser.")

    def target_stage(self) -> StageSpec | None:
        return self.train

    @model_validator(mode="after")
    def _model_source(self) -> TrainJobSpec:
        if self.model.source == "train":
            raise ValueError('model.source "train" is for teachers; a train job trains `model`')
        return self


class DistillJobSpec(JobSpecBase):
    """A teacher distilled into a student, with no fine-tuning on a target."""

    kind: Literal["distill"] = Field(
        description="distill: train `student` to match `teacher` on the distill set."
    )
    teacher: ModelSpec = Field(
        description="The network that teaches: trained here, pretrained, uploaded or an "
        "earlier job's model. It gets no gradients."
    )
    student: ModelSpec = Field(description="The network that learns; it becomes the model.")
    distill: DistillStage = Field(
        description="The distillation: the distill set (labels optional), loss and schedule."
    )


class FinetuneJobSpec(JobSpecBase):
    """One network fine-tuned on a target task."""

    kind: Literal["finetune"] = Field(description="finetune: train `model` on the target task.")
    model: ModelSpec = Field(
        description="The network to adapt, usually one with weights (an earlier job's model, "
        "a checkpoint, torchvision); its head is replaced when the class count changes."
    )
    finetune: FinetuneStage = Field(
        description="The fine-tuning: the target's labelled data, loss and schedule."
    )
    teacher: ModelSpec | None = Field(None, description="Needed when finetune.kd_weight > 0.")

    def target_stage(self) -> StageSpec | None:
        return self.finetune

    @model_validator(mode="after")
    def _kd_needs_teacher(self) -> FinetuneJobSpec:
        if self.finetune.kd_weight > 0 and self.teacher is None:
            raise ValueError("finetune.kd_weight > 0 needs a teacher")
        return self


class PipelineJobSpec(JobSpecBase):
    """The whole method: teacher -> student -> target, with a report."""

    kind: Literal["pipeline"] = Field(
        description="pipeline: obtain the teacher, distill it into the student, fine-tune the "
        "student on the target, and report teacher vs student."
    )
    strategy: Literal["distill_then_finetune", "finetune_then_distill"] = Field(
        "finetune_then_distill",
        description="finetune_then_distill (default: it won every measured seed and size, "
        "docs/benchmarks.md): fine-tune the teacher on the target first, then distill the "
        "adapted teacher and fine-tune the student. distill_then_finetune (the founding "
        "document's order): distill the source teacher, then fine-tune the student on the "
        "target; for one distilled student fine-tuned on several targets.",
    )
    teacher: ModelSpec = Field(
        description="The big network: trained here (source train), pretrained (torchvision), "
        "uploaded (checkpoint) or an earlier job's model."
    )
    student: ModelSpec | SizeSearch = Field(
        description="The small network that is served, or a size search: candidates and "
        "constraints, from which one student is chosen."
    )
    distill: DistillStage = Field(
        description="Distillation of the teacher into the student, on the distill set "
        "(labels optional)."
    )
    finetune: FinetuneStage = Field(
        description="Fine-tuning of the student on the target's labelled data (also the "
        "settings of teacher_finetune and of the baseline)."
    )
    baseline: bool | None = Field(
        None,
        description="Also train the student from scratch on the target data alone (the "
        "report's `baseline` and `gain_over_baseline`: what distillation bought). Unset: on "
        "for students of at most 5M parameters, whose training costs a fraction of the "
        "teacher's; false turns it off.",
    )

    def target_stage(self) -> StageSpec | None:
        return self.finetune

    teacher_on_target: bool | None = Field(
        None,
        description="With distill_then_finetune and a teacher of other classes than the "
        "target's: fine-tune a copy of the teacher on the target (stage teacher_finetune) "
        "so the report measures it there. Unset: on for teachers of at most 30M "
        "parameters; false skips it, and the report says why the teacher has no accuracy.",
    )


# The job kinds, in the order a user meets them.
JOB_KINDS = ("pipeline", "distill", "finetune", "train")

JobSpec = Annotated[
    TrainJobSpec | DistillJobSpec | FinetuneJobSpec | PipelineJobSpec,
    Field(discriminator="kind"),
]


def default_evaluate(target: DatasetRef) -> EvaluateSpec:
    """The default evaluation set: the target's test split, all of it, with its labels."""
    return EvaluateSpec(
        dataset=target.model_copy(
            update={"split": "test", "samples_per_class": None, "labels": True}
        )
    )


def spec_inputs(spec: BaseModel) -> set[tuple[str, str]]:
    """What a spec reads that its owner can delete, as (kind, id) pairs: uploaded
    datasets ("dataset"), checkpoints ("checkpoint") and earlier models ("model")."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, DatasetRef) and node.id is not None:
            found.add(("dataset", node.id))
        if isinstance(node, ModelSpec):
            if node.checkpoint_id is not None:
                found.add(("checkpoint", node.checkpoint_id))
            if node.model_id is not None:
                found.add(("model", node.model_id))
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec)
    return found


def parse_spec(
    data: dict[str, Any],
) -> TrainJobSpec | DistillJobSpec | FinetuneJobSpec | PipelineJobSpec:
    """Parse a stored spec (the worker's entry point)."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobSpec).validate_python(data)
