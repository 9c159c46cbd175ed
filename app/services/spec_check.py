"""The semantic half of job-spec validation, run at submission.

Pydantic (app.schemas.job_spec) checks shapes and ranges; this checks what needs a
registry or the database: architecture, weight and dataset names, classes the dataset
has, the owner's uploads and models, layer names for hints, and that the stages fit
together (an evaluation set with the model's classes, labels where a loss needs them).
Every problem is reported with the field it is in, all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.orm import Session

from app.config import DATASET_EXPANSION, get_settings
from app.core.archs import arch_info, default_hint_layer, weights_enum_names
from app.core.datasets import (
    DatasetInfo,
    UploadedInfo,
    dataset_info,
    resolve_classes,
    target_names,
)
from app.core.losses import DistillLoss, get_loss
from app.core.network import module_names
from app.core.registry import UnknownNameError
from app.models import Checkpoint, Dataset, TrainedModel
from app.schemas.job_spec import (
    DistillJobSpec,
    FinetuneJobSpec,
    PipelineJobSpec,
    TrainJobSpec,
    default_evaluate,
)
from app.schemas.model_spec import ModelSpec, SizeSearch
from app.schemas.stage_spec import DatasetRef, DistillStage, EvaluateSpec, FinetuneStage
from app.services import owned

AnySpec = TrainJobSpec | DistillJobSpec | FinetuneJobSpec | PipelineJobSpec
Row = TypeVar("Row", Dataset, Checkpoint, TrainedModel)
SpecT = TypeVar("SpecT", TrainJobSpec, DistillJobSpec, FinetuneJobSpec, PipelineJobSpec)


@dataclass
class ResolvedData:
    """A dataset reference as the checks see it: its classes after filtering."""

    num_classes: int
    labeled: bool
    channels: int
    image_size: int
    task: str = "classification"


@dataclass
class ResolvedModel:
    arch: str | None
    num_classes: int | None  # fixed by the source (a checkpoint or a model); None if free
    in_channels: int | None
    # What the model predicts once built: a `model` source's stored task, a `train`
    # source's data's; classification otherwise.
    task: str = "classification"


@dataclass
class SpecChecker:
    session: Session
    owner: str
    errors: list[dict[str, str]] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append({"field": where, "message": message})

    def referenced(self, model: type[Row], id_: str | None) -> Row | None:
        """The owner's row that the spec names, locked `FOR SHARE` until the job is stored.

        On Postgres a DELETE of the same row then either waits for this submission and
        sees its job (409), or wins, and this lookup finds no row (422).
        """
        return owned.find_owned(self.session, model, owner=self.owner, id_=id_, lock="share")

    # ------------------------------------------------------------------ datasets
    def dataset(self, ref: DatasetRef, where: str) -> ResolvedData | None:
        uploaded = None
        if ref.id is not None:
            row = self.referenced(Dataset, ref.id)
            if row is None:
                self.error(f"{where}.id", f"no dataset with id {ref.id!r}")
                return None
            regression = (row.meta or {}).get("task") == "regression"
            uploaded = UploadedInfo(
                class_names=(
                    target_names(int(row.meta["targets"])) if regression else list(row.classes)
                ),
                channels=int(row.shape[0]),
                image_size=int(row.shape[-1]),
                labeled=row.labeled,
                scale=255.0 if row.dtype == "uint8" else 1.0,
                num_samples=row.num_samples,
                task="regression" if regression else "classification",
                streamed=(row.meta or {}).get("url") is not None,
            )
        try:
            info: DatasetInfo = dataset_info(ref, uploaded)
        except UnknownNameError as exc:
            self.error(f"{where}.name", str(exc))
            return None
        if info.task == "regression":
            for field in ("classes", "samples_per_class"):
                if getattr(ref, field) is not None:
                    self.error(
                        f"{where}.{field}", "the dataset holds regression targets, not classes"
                    )
                    return None
        if ref.classes is not None:
            if not info.labeled:
                self.error(f"{where}.classes", "the dataset has no labels to filter by")
                return None
            try:
                resolve_classes(ref, info.class_names)
            except ValueError as exc:
                self.error(f"{where}.classes", str(exc))
                return None
        if ref.samples_per_class is not None and not info.labeled:
            self.error(f"{where}.samples_per_class", "the dataset has no labels to count by")
        self.memory_size(ref, info, where)
        n_classes = len(ref.classes) if ref.classes is not None else len(info.class_names)
        return ResolvedData(
            num_classes=n_classes,
            labeled=info.labeled and ref.labels,
            channels=info.channels,
            image_size=ref.image_size or info.image_size,
            task=info.task,
        )

    def memory_size(self, ref: DatasetRef, info: DatasetInfo, where: str) -> None:
        """A dataset is held whole in the worker's memory: bound it as an upload's decoded
        arrays are, or one spec (10M synthetic samples, or CIFAR-100 resized to 224 pixels)
        takes the worker down instead of failing here."""
        size = info.memory_bytes(ref)
        limit = get_settings().max_dataset_bytes
        if size is None or size <= limit:
            return
        field = "num_samples" if ref.name == "synthetic" and ref.num_samples else "image_size"
        if ref.name == "synthetic" and not ref.image_size and not ref.num_samples:
            field = "name"
        side = ref.image_size or info.image_size
        self.error(
            f"{where}.{field}",
            f"{info.samples(ref)} images of {info.channels}x{side}x{side} take {size} bytes, "
            f"more than the {limit} a dataset may take "
            f"({DATASET_EXPANSION} x STILLHOUSE_MAX_UPLOAD_BYTES)",
        )

    def labelled_dataset(self, ref: DatasetRef, where: str) -> ResolvedData | None:
        data = self.dataset(ref, where)
        if data is not None and not data.labeled:
            self.error(where, "this stage trains on labels, and this dataset has none")
        return data

    # -------------------------------------------------------------------- models
    def stored_model(self, spec: ModelSpec, where: str) -> Checkpoint | TrainedModel | None:
        """The checkpoint or model a spec starts from, or None (the error is recorded)."""
        model: type[Checkpoint] | type[TrainedModel]
        if spec.source == "checkpoint":
            model, what, id_ = Checkpoint, "checkpoint", spec.checkpoint_id
        else:
            model, what, id_ = TrainedModel, "model", spec.model_id
        row = self.referenced(model, id_)
        if row is None:
            self.error(f"{where}.{what}_id", f"no {what} {id_!r}")
            return None
        if spec.arch is not None and spec.arch != row.arch:
            self.error(f"{where}.arch", f"the {what} is a {row.arch}")
        return row

    def model(self, spec: ModelSpec, where: str) -> ResolvedModel:
        if spec.source in ("checkpoint", "model"):
            row = self.stored_model(spec, where)
            if row is None:
                return ResolvedModel(None, None, None)
            if isinstance(row, Checkpoint):
                meta = row.meta or {}
                return ResolvedModel(row.arch, row.num_classes, meta.get("in_channels"))
            return ResolvedModel(
                row.arch,
                row.meta.get("num_classes"),
                row.meta.get("network", {}).get("in_channels"),
                row.meta.get("task", "classification"),
            )
        assert spec.arch is not None
        try:
            arch_info(spec.arch)
        except UnknownNameError as exc:
            self.error(f"{where}.arch", str(exc))
            return ResolvedModel(None, None, None)
        if spec.source == "torchvision":
            names = weights_enum_names(spec.arch)
            if not names:
                self.error(f"{where}.source", f"{spec.arch} has no torchvision weights")
            elif spec.weights not in names:
                self.error(
                    f"{where}.weights", f"unknown weights; {spec.arch} has {', '.join(names)}"
                )
        if spec.width != 1.0 and arch_info(spec.arch).family != "small_cnn":
            self.error(f"{where}.width", f"width applies to small_cnn, not {spec.arch}")
        task = "classification"
        if spec.source == "train":
            assert spec.train is not None
            data = self.stage_data(spec.train.dataset, f"{where}.train.dataset", labelled=True)
            task = data.task if data is not None else task
        return ResolvedModel(spec.arch, None, None, task)

    def stage_data(self, ref: DatasetRef, where: str, *, labelled: bool) -> ResolvedData | None:
        return self.labelled_dataset(ref, where) if labelled else self.dataset(ref, where)

    def teacher_classes(self, spec: ModelSpec, resolved: ResolvedModel, where: str) -> int | None:
        """How many outputs the teacher has once built."""
        if spec.source == "train" and spec.train is not None:
            data = self.dataset(spec.train.dataset, f"{where}.train.dataset")
            return data.num_classes if data else None
        if resolved.num_classes is not None:
            return resolved.num_classes
        if spec.source == "torchvision":
            return 1000  # the ImageNet head the weights come with
        return None

    def distill_loss(self, stage: DistillStage) -> DistillLoss | None:
        """The registered loss `distill.loss.type` names; None (and the error, with close
        names) when there is none."""
        try:
            return get_loss(stage.loss.type)
        except UnknownNameError as exc:
            self.error("distill.loss.type", str(exc))
            return None

    def hint_layers(
        self,
        stage: DistillStage,
        registered: DistillLoss | None,
        teacher: ResolvedModel,
        student_arch: str | None,
        where: str,
    ) -> None:
        """The layers a feature-matching loss reads must exist in both networks."""
        if registered is None or not registered.features:
            return
        loss = stage.loss
        for role, arch, name in (
            ("teacher", teacher.arch, loss.teacher_layer),
            ("student", student_arch, loss.student_layer),
        ):
            if arch is None:
                continue
            layer = name or default_hint_layer(arch)
            if layer is None:
                self.error(
                    f"{where}.loss.{role}_layer", f"{arch} has no default hint layer; name one"
                )
                continue
            names = module_names(arch)
            if layer not in names:
                sample = sorted(n for n in names if n.count(".") <= 2 and n)[:25]
                self.error(
                    f"{where}.loss.{role}_layer",
                    f"{arch} has no module {layer!r}; some it has: {', '.join(sample)}",
                )

    def evaluation(
        self,
        spec: AnySpec,
        target: DatasetRef,
        classes: int | None,
        *,
        must_match: bool = True,
        task: str | None = None,
    ) -> EvaluateSpec:
        """The evaluation set (default: the target's test split); with `must_match`, it
        must have the classes the served model predicts."""
        evaluate = spec.evaluate or default_evaluate(target)
        before = len(self.errors)
        data = self.labelled_dataset(evaluate.dataset, "evaluate.dataset")
        if spec.evaluate is None:
            # The default set is the target's test split: a problem the two share is already
            # reported under the target's field, the one the user wrote; say it once.
            seen = {e["message"] for e in self.errors[:before]}
            self.errors[before:] = [e for e in self.errors[before:] if e["message"] not in seen]
        if must_match and data is not None and task is not None and data.task != task:
            self.error("evaluate.dataset", f"is a {data.task} set; the model does {task}")
        elif (
            must_match and data is not None and classes is not None and data.num_classes != classes
        ):
            self.error(
                "evaluate.dataset",
                f"has {data.num_classes} classes; the model predicts {classes}",
            )
        return evaluate

    def with_evaluation(self, spec: SpecT, target: DatasetRef, data: ResolvedData | None) -> SpecT:
        """`spec` with its evaluation set filled in, checked to have the classes (or the
        task) of the target data the served model learns."""
        evaluate = self.evaluation(
            spec,
            target,
            data.num_classes if data else None,
            task=data.task if data else None,
        )
        return spec.model_copy(update={"evaluate": evaluate})

    def finetune_target(self, stage: FinetuneStage, data: ResolvedData | None, where: str) -> None:
        """Regression targets train with the squared error and have no soft targets."""
        if data is None or data.task != "regression":
            return
        if stage.loss == "cross_entropy":
            self.error(f"{where}.loss", "the target holds regression targets: use mse (or auto)")
        if stage.kd_weight > 0:
            self.error(f"{where}.kd_weight", "soft targets need classes; the target is regression")

    def regression_teacher(self, teacher: ResolvedModel, registered: DistillLoss | None) -> None:
        """A teacher trained on regression targets is distilled by the squared error only."""
        if (
            teacher.task == "regression"
            and registered is not None
            and not registered.for_regression
        ):
            self.error("distill.loss.type", "the teacher predicts regression targets: use mse")

    def int8_export(self, spec: AnySpec, task: str | None) -> None:
        """int8 is served within an accuracy budget (`int8_max_drop`), and regression
        targets have no accuracy: refused rather than quantized against a made-up rule."""
        if spec.export.int8 and task == "regression":
            self.error(
                "export.int8",
                "int8 is served within an accuracy budget and this model predicts regression "
                "targets, which have no accuracy; leave int8 false",
            )

    # ------------------------------------------------------------------ job kinds
    def check(self, spec: AnySpec) -> AnySpec:
        """Check `spec`; returns it with defaults filled in. Errors are in `self.errors`."""
        if isinstance(spec, TrainJobSpec):
            self.model(spec.model, "model")
            data = self.labelled_dataset(spec.train.dataset, "train.dataset")
            self.int8_export(spec, data.task if data else None)
            return self.with_evaluation(spec, spec.train.dataset, data)
        if isinstance(spec, DistillJobSpec):
            teacher = self.model(spec.teacher, "teacher")
            self.model(spec.student, "student")
            k = self.teacher_classes(spec.teacher, teacher, "teacher")
            self.dataset(spec.distill.dataset, "distill.dataset")
            loss = self.distill_loss(spec.distill)
            self.hint_layers(spec.distill, loss, teacher, spec.student.arch, "distill")
            self.regression_teacher(teacher, loss)
            self.int8_export(spec, teacher.task)
            # A distilled student predicts the teacher's classes (ImageNet's, say); on an
            # evaluation set with other classes the report gives agreement, not accuracy.
            evaluate = self.evaluation(spec, spec.distill.dataset, k, must_match=False)
            return spec.model_copy(update={"evaluate": evaluate})
        if isinstance(spec, FinetuneJobSpec):
            self.model(spec.model, "model")
            data = self.labelled_dataset(spec.finetune.dataset, "finetune.dataset")
            self.finetune_target(spec.finetune, data, "finetune")
            self.int8_export(spec, data.task if data else None)
            if spec.teacher is not None:
                teacher = self.model(spec.teacher, "teacher")
                k = self.teacher_classes(spec.teacher, teacher, "teacher")
                if data is not None and k is not None and k != data.num_classes:
                    self.error(
                        "teacher",
                        f"the teacher predicts {k} classes and finetune.dataset has "
                        f"{data.num_classes}; a kd term needs the same classes",
                    )
            return self.with_evaluation(spec, spec.finetune.dataset, data)
        return self.check_pipeline(spec)

    def check_pipeline(self, spec: PipelineJobSpec) -> PipelineJobSpec:
        teacher = self.model(spec.teacher, "teacher")
        loss = self.distill_loss(spec.distill)
        students = (
            spec.student.candidates if isinstance(spec.student, SizeSearch) else [spec.student]
        )
        for i, student in enumerate(students):
            where = (
                f"student.candidates[{i}]" if isinstance(spec.student, SizeSearch) else "student"
            )
            resolved = self.model(student, where)
            self.hint_layers(spec.distill, loss, teacher, resolved.arch, "distill")
        self.dataset(spec.distill.dataset, "distill.dataset")
        target = self.labelled_dataset(spec.finetune.dataset, "finetune.dataset")
        self.finetune_target(spec.finetune, target, "finetune")
        self.regression_teacher(teacher, loss)
        self.int8_export(spec, target.task if target else None)
        if (
            spec.strategy == "finetune_then_distill"
            and target is not None
            and target.task == "regression"
            and loss is not None
            and not loss.for_regression
        ):
            # The adapted teacher then predicts the regression targets.
            self.error(
                "distill.loss.type",
                "finetune_then_distill on regression targets distills them: use mse",
            )
        if (
            isinstance(spec.student, SizeSearch)
            and spec.student.constraints.min_accuracy is not None
            and target is not None
            and target.task == "regression"
        ):
            self.error(
                "student.constraints.min_accuracy", "the target is regression: it has no accuracy"
            )
        if spec.finetune.kd_weight > 0 and spec.strategy == "distill_then_finetune":
            k = self.teacher_classes(spec.teacher, teacher, "teacher")
            if target is not None and k is not None and k != target.num_classes:
                self.error(
                    "finetune.kd_weight",
                    f"with distill_then_finetune the teacher predicts {k} classes, the target "
                    f"has {target.num_classes}: a kd term needs the same classes (use "
                    "finetune_then_distill, which adapts the teacher to the target first)",
                )
        return self.with_evaluation(spec, spec.finetune.dataset, target)


def check_spec(session: Session, owner: str, spec: AnySpec) -> tuple[AnySpec, list[dict[str, str]]]:
    checker = SpecChecker(session, owner)
    filled = checker.check(spec)
    return filled, checker.errors
