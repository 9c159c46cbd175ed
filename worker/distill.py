"""The distill stage: a new student learns from the teacher on the distill set (labels
optional), through the teacher-output cache where it pays (worker/teacher_outputs.py).
"""

from __future__ import annotations

import logging

import torch

from app.core.archs import default_hint_layer
from app.core.datasets import InMemoryData
from app.core.losses import HintAdapter, get_loss
from app.schemas.model_spec import ModelSpec
from app.schemas.stage_spec import DatasetRef, DistillLossSpec, DistillStage, StageSpec
from worker.build import Trained, build_from_spec, retarget, same_classes
from worker.context import JobContext, JobFailedError
from worker.inference import FeatureHook, batches, collect
from worker.objectives import DistillObjective
from worker.schedule import describe, resolve_stage
from worker.stages import run_fit_stage, stage_done
from worker.teacher_outputs import (
    ViewSchedule,
    cache_key,
    compute_teacher_outputs,
    feature_cache_fits,
    outputs_tensors,
    saved_outputs,
)
from worker.train import EVAL_BATCH_SIZE, EvalFn

log = logging.getLogger(__name__)


def choose_teacher_outputs(stage: DistillStage) -> str:
    """`auto`: cache without augmentation; with it, views when fewer than the epochs;
    live with mixup."""
    if stage.teacher_outputs != "auto":
        return stage.teacher_outputs
    if stage.mixup > 0:
        return "live"  # every mixed image is new to the teacher
    if stage.augment == "none":
        return "cache"
    assert stage.epochs is not None  # resolved (worker/schedule.py)
    return "views" if stage.teacher_views < stage.epochs else "live"


def distill(
    ctx: JobContext,
    teacher: Trained,
    student_spec: ModelSpec,
    stage_spec: DistillStage,
    *,
    seed: int,
    stage: str = "distill",
) -> Trained:
    """Distill `teacher` into a new student on the distill set (labels optional)."""
    data = ctx.load_data(stage_spec.dataset, seed=seed)
    # A student may start from weights (an earlier model, a checkpoint): fine-tuning rate.
    stage_spec = resolve_stage(stage_spec, data, pretrained=student_spec.source != "scratch")
    assert stage_spec.epochs is not None
    k = teacher.config.num_classes
    student_net, student_config = build_from_spec(ctx, student_spec, data, k, seed=seed)
    student = Trained(student_net.to(ctx.device), student_config, teacher.class_names, teacher.task)
    if stage_done(ctx, stage, student.net) is not None:
        return student
    mode = choose_teacher_outputs(stage_spec)
    loss = stage_spec.loss
    ctx.reporter.stage(
        stage,
        epochs=stage_spec.epochs,
        description=f"distilling {teacher.config.arch} into {student.config.arch} on "
        f"{data.description} ({len(data)} images, {loss.type} loss, teacher outputs: {mode}): "
        f"{describe(stage_spec, len(data))}",
    )
    teacher_here = retarget(teacher, data, k, seed=seed, device=ctx.device, read_only=True)
    use_labels = same_classes(teacher, data)
    if loss.alpha < 1.0 and not use_labels:
        ctx.reporter.log(
            "the distill set's labels are not the teacher's classes: distilling without "
            "hard labels (alpha taken as 1)",
            stage=stage,
        )
    views = None
    if mode == "views":
        views = ViewSchedule(
            n=len(data),
            views=stage_spec.teacher_views,
            kind=stage_spec.augment,
            image_size=data.image_size,
            seed=seed,
        )
    hints = None
    if get_loss(loss.type).features:
        hints = _Hints.attach(ctx, teacher_here, student, loss, data, seed=seed)
        if mode != "live" and not feature_cache_fits(
            teacher_here.net, data, hints.teacher_layer, ctx.device, views=_view_count(views)
        ):
            ctx.reporter.log("hint features too large to cache: live teacher passes", stage=stage)
            mode, views = "live", None
        if mode == "live":
            hints.hook_teacher(teacher_here.net)

    cache = None
    fit_stage: StageSpec = stage_spec
    if mode in ("cache", "views"):
        count = (
            f"{len(data)} samples"
            if views is None
            else (f"{stage_spec.teacher_views} augmented views of {len(data)} samples")
        )
        layer = hints.teacher_layer if hints is not None else None
        key = cache_key(data, views, layer, seed=seed)
        cache = saved_outputs(ctx.store.load_outputs(stage, key), ctx.device)
        if cache is not None:
            ctx.reporter.log(f"the teacher's outputs for {count} were kept: reused", stage=stage)
        else:
            ctx.reporter.log(f"caching the teacher's outputs for {count}", stage=stage)
            cache = compute_teacher_outputs(
                teacher_here.net,
                data,
                device=ctx.device,
                control=ctx.control,
                feature_layer=layer,
                views=views,
            )
            ctx.store.save_outputs(stage, outputs_tensors(cache), key)
    if views is not None:
        # The objective applies the view; the loop must not augment again.
        fit_stage = stage_spec.model_copy(update={"augment": "none"})

    objective = DistillObjective(
        teacher=teacher_here.net,
        loss=loss,
        use_labels=use_labels,
        cache=cache,
        adapter=hints.adapter if hints is not None else None,
        student_hook=hints.student_hook if hints is not None else None,
        teacher_hook=hints.teacher_hook if hints is not None else None,
        views=views,
        mixup=stage_spec.mixup,
        seed=seed,
    )
    try:
        run_fit_stage(
            ctx,
            stage=stage,
            net=student.net,
            # Labels the teacher never knew would only give a meaningless train accuracy.
            data=data if use_labels else data.unlabelled(),
            spec_stage=fit_stage,
            objective=objective,
            seed=seed,
            eval_fn=distill_eval_fn(
                ctx, teacher_here, stage_spec.dataset, seed=seed, use_labels=use_labels
            ),
            announce=False,
            extra_modules=(
                torch.nn.ModuleDict({"adapter": hints.adapter}) if hints is not None else None
            ),
            on_epoch_start=views.set_epoch if views is not None else None,
        )
    finally:
        if hints is not None:
            hints.remove()
    return student


def _view_count(views: ViewSchedule | None) -> int:
    return 1 if views is None else views.views


class _Hints:
    """FitNets hints: the two layers, the hooks that read them, the learned adapter."""

    def __init__(self, teacher_layer: str, student_hook: FeatureHook, adapter: HintAdapter):
        self.teacher_layer = teacher_layer
        self.student_hook = student_hook
        self.teacher_hook: FeatureHook | None = None
        self.adapter = adapter

    @classmethod
    def attach(
        cls,
        ctx: JobContext,
        teacher: Trained,
        student: Trained,
        loss: DistillLossSpec,
        data: InMemoryData,
        *,
        seed: int,
    ) -> _Hints:
        t_layer = loss.teacher_layer or default_hint_layer(teacher.config.arch)
        s_layer = loss.student_layer or default_hint_layer(student.config.arch)
        if t_layer is None or s_layer is None:
            raise JobFailedError(
                "bad_spec", "hint distillation needs teacher_layer and student_layer"
            )
        student_hook = FeatureHook(student.net, s_layer)
        # The adapter maps the student's feature shape to the teacher's: probe both.
        probe = data.head(2)
        t_probe = collect(
            batches(teacher.net, probe, device=ctx.device, batch_size=2, feature_layer=t_layer)
        ).features
        with torch.no_grad():
            student.net.eval()
            student.net(probe.x.to(ctx.device).float())
            s_probe = student_hook.take()
            student.net.train()
        assert t_probe is not None
        torch.manual_seed(seed)
        adapter = HintAdapter(s_probe.shape, t_probe.shape).to(ctx.device)
        return cls(t_layer, student_hook, adapter)

    def hook_teacher(self, teacher: torch.nn.Module) -> None:
        """Live teacher passes: read its hint layer from each forward pass."""
        self.teacher_hook = FeatureHook(teacher, self.teacher_layer)

    def remove(self) -> None:
        for hook in (self.student_hook, self.teacher_hook):
            if hook is not None:
                hook.remove()


def distill_eval_fn(
    ctx: JobContext, teacher: Trained, ref: DatasetRef, *, seed: int, use_labels: bool
) -> EvalFn | None:
    """Per-epoch: agreement with the teacher on the distill set's held-out split (and
    accuracy, where its labels are the teacher's classes)."""
    if ref.split != "train" or teacher.task == "regression":
        # Agreement of top classes means nothing for regression outputs.
        return None
    held_out = ctx.load_data(
        ref.model_copy(update={"split": "test", "samples_per_class": None}), seed=seed
    )
    if len(held_out) == 0:
        return None
    return Agreement(teacher.net, held_out, use_labels=use_labels)


class Agreement:
    """The student's agreement with the teacher's top class on a held-out set (picklable,
    for data-parallel ranks), on the device the student is on."""

    def __init__(self, teacher: torch.nn.Module, held_out: InMemoryData, *, use_labels: bool):
        self.teacher, self.held_out, self.use_labels = teacher, held_out, use_labels
        self.teacher_pred: torch.Tensor | None = None  # computed at the first evaluation

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        if self.teacher_pred is None:
            t_out = compute_teacher_outputs(self.teacher, self.held_out, device=device)
            self.teacher_pred = t_out.logits.argmax(1)
        out = collect(batches(model, self.held_out, device=device, batch_size=EVAL_BATCH_SIZE))
        pred = out.logits.argmax(1)
        scores = {"agreement": float((pred == self.teacher_pred.to(pred.device)).float().mean())}
        if self.use_labels and self.held_out.y is not None:
            scores["accuracy"] = float((pred == self.held_out.y.to(pred.device)).float().mean())
        return scores
