"""The training stages every job kind is made of: teacher, fine-tuning, training from
scratch (and the distill stage, in worker/distill.py).

Each stage is: load its data, build or load its networks, `fit`, save the result. A stage
whose result is already saved (the job resumed after its worker died) is skipped; a stage
interrupted mid-way resumes from its last epoch's checkpoint inside `fit`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from app.core.archs import head_name
from app.core.datasets import InMemoryData
from app.schemas.job_spec import default_evaluate
from app.schemas.model_spec import ModelSpec
from app.schemas.stage_spec import FinetuneStage, StageSpec
from worker.build import Trained, build_from_spec, build_model, retarget, same_classes
from worker.context import JobContext, JobFailedError
from worker.objectives import FinetuneObjective, supervised
from worker.parallel import fit_in_processes
from worker.rank import FitTask
from worker.ray_train import fit_on_ray, wants_ray
from worker.schedule import describe, resolve_stage
from worker.sources import ModelSource
from worker.teacher_outputs import compute_teacher_outputs
from worker.train import EvalFn, FitResult, Objective, evaluate, fit

log = logging.getLogger(__name__)


def stage_done(ctx: JobContext, stage: str, net: torch.nn.Module) -> dict[str, Any] | None:
    """If `stage` finished in an earlier attempt, load its weights into `net`; its record."""
    done = ctx.store.load_done(stage)
    if done is None:
        return None
    state, record = done
    net.load_state_dict(state)
    net.to(ctx.device)
    ctx.reporter.log(f"stage {stage} finished in an earlier attempt; reusing it", stage=stage)
    return record


def run_fit_stage(
    ctx: JobContext,
    *,
    stage: str,
    net: torch.nn.Module,
    data: InMemoryData,
    spec_stage: StageSpec,
    objective: Objective,
    seed: int,
    eval_fn: EvalFn | None = None,
    description: str = "",
    announce: bool = True,
    extra_modules: torch.nn.ModuleDict | None = None,
    on_epoch_start: Any = None,
) -> dict[str, Any]:
    """Fit `net` as stage `stage` (resuming inside the stage), then save its result: in
    this process, or as the job's data-parallel processes (worker/parallel.py).

    `announce=False`: the caller already announced the stage (work before the fit, such
    as caching the teacher's outputs, belongs to it). `extra_modules`, `on_epoch_start`:
    see `fit`."""
    spec_stage = resolve_stage(spec_stage, data)
    if announce:
        assert spec_stage.epochs is not None
        schedule = describe(spec_stage, len(data))
        text = f"{description}: {schedule}" if description else f"stage {stage}: {schedule}"
        ctx.reporter.stage(stage, epochs=spec_stage.epochs, description=text)
    net.to(ctx.device)
    task = FitTask(
        stage_name=stage,
        model=net,
        train=data,
        stage=spec_stage,
        objective=objective,
        seed=seed,
        checkpoints=ctx.store,
        eval_fn=eval_fn,
        extra_modules=extra_modules,
        on_epoch_start=on_epoch_start,
        # The distill objective's hint hooks, re-attached in each rank.
        hooks=list(getattr(objective, "hooks", [])),
    )
    if ctx.processes == 1:
        result = fit(**task.fit_args(), device=ctx.device, control=ctx.control, sink=ctx.reporter)
        return _done(ctx, stage, net, result)
    ranks: dict[str, Any] = {
        "processes": ctx.processes,
        "device": ctx.device,
        "control": ctx.control,
        "sink": ctx.reporter,
    }
    if wants_ray(ctx.settings, ctx.processes, cuda=ctx.device.type == "cuda"):
        assert ctx.settings.ray_address is not None
        ctx.reporter.log(
            f"{stage}: {ctx.processes} processes, more than this worker runs itself: "
            f"training on the Ray cluster at {ctx.settings.ray_address}",
            stage=stage,
        )
        result = fit_on_ray(task, **ranks, address=ctx.settings.ray_address)
    else:
        result = fit_in_processes(task, **ranks, threads=ctx.settings.torch_threads())
    return _done(ctx, stage, net, result)


def _done(ctx: JobContext, stage: str, net: torch.nn.Module, result: FitResult) -> dict[str, Any]:
    """Keep a finished stage's weights and record (its history and training seconds)."""
    record = {"history": result.history, "seconds": round(result.seconds, 3)}
    ctx.store.save_done(stage, net, record)
    return record


class Accuracy:
    """A stage's per-epoch evaluation on a labelled set (picklable, for data-parallel
    ranks), on the device the model is on."""

    def __init__(self, data: InMemoryData) -> None:
        self.data = data

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate(model, self.data, device=next(model.parameters()).device)


def obtain_teacher(
    ctx: JobContext, source: ModelSource, *, data: InMemoryData, seed: int
) -> Trained:
    """The teacher: trained here on its source task (stage "teacher"), or loaded.

    `data` (the distill set) sizes a loaded teacher's input; every later stage re-points
    it at its own data.
    """
    spec = source.spec
    if spec.source == "train":
        assert spec.train is not None
        task_data = ctx.load_data(spec.train.dataset, seed=seed)
        if task_data.y is None:
            raise JobFailedError("unlabelled_data", "teacher.train.dataset has no labels")
        task_eval = ctx.load_data(default_evaluate(spec.train.dataset).dataset, seed=seed)
        scratch = spec.model_copy(update={"source": "scratch", "train": None})
        return train_from_scratch(
            ctx,
            scratch,
            spec.train,
            data=task_data,
            eval_data=task_eval,
            seed=seed,
            stage="teacher",
            teacher=True,
        )
    if source.num_classes is None or source.class_names is None:
        raise JobFailedError("bad_spec", f"a {spec.source} model has no classes of its own")
    net, config = build_model(
        source, data, source.num_classes, seed=seed, torch_home=ctx.settings.torch_home
    )
    return Trained(net.to(ctx.device), config, source.class_names, source.task)


def finetune(
    ctx: JobContext,
    model: Trained,
    stage_spec: FinetuneStage,
    *,
    data: InMemoryData,
    eval_data: InMemoryData | None,
    teacher: Trained | None,
    seed: int,
    stage: str = "finetune",
    adapts_teacher: bool = False,
) -> Trained:
    """Fine-tune `model` on the target `data`, replacing its head if the classes change.
    `adapts_teacher`: `model` is a pipeline's teacher, to teach on the target (its
    augmentation default is a teacher's, worker/schedule.py)."""
    if data.y is None:
        raise JobFailedError("unlabelled_data", "finetune.dataset has no labels")
    stage_spec = resolve_stage(stage_spec, data, pretrained=True, teacher=adapts_teacher)
    target = retarget(model, data, data.num_classes, seed=seed, device=ctx.device)
    target.class_names, target.task = data.class_names, data.task
    if stage_done(ctx, stage, target.net) is not None:
        return target
    teacher_net, cache = None, None
    if stage_spec.kd_weight > 0 and teacher is not None:
        if not same_classes(teacher, data):
            raise JobFailedError(
                "bad_spec", "finetune.kd_weight needs a teacher that predicts the target's classes"
            )
        teacher_net = retarget(
            teacher, data, data.num_classes, seed=seed, device=ctx.device, read_only=True
        ).net
        if stage_spec.augment == "none":
            cache = compute_teacher_outputs(
                teacher_net, data, device=ctx.device, control=ctx.control
            ).logits

    freeze = FreezeBackbone(
        target.net, "backbone." + head_name(target.net.backbone), stage_spec.freeze_backbone_epochs
    )

    run_fit_stage(
        ctx,
        stage=stage,
        net=target.net,
        data=data,
        spec_stage=stage_spec,
        objective=FinetuneObjective(stage_spec, teacher_net, cache),
        seed=seed,
        eval_fn=Accuracy(eval_data) if eval_data is not None else None,
        description=f"fine-tuning {target.config.arch} on {data.description} ({len(data)} images)",
        on_epoch_start=freeze if stage_spec.freeze_backbone_epochs else None,
    )
    for p in target.net.parameters():
        p.requires_grad_(True)
    return target


class FreezeBackbone:
    """The first `epochs` epochs train the new head alone (an `on_epoch_start` of fit)."""

    # Tells a data-parallel fit that some parameters get no gradient for a while.
    freezes = True

    def __init__(self, net: torch.nn.Module, head: str, epochs: int) -> None:
        self.net, self.head, self.epochs = net, head, epochs

    def __call__(self, epoch: int) -> None:
        frozen = epoch < self.epochs
        for name, p in self.net.named_parameters():
            p.requires_grad_(not frozen or name.startswith(self.head + "."))


def train_from_scratch(
    ctx: JobContext,
    spec: ModelSpec,
    stage_spec: StageSpec,
    *,
    data: InMemoryData,
    eval_data: InMemoryData | None,
    seed: int,
    stage: str,
    teacher: bool = False,
) -> Trained:
    """Supervised training of a fresh network (a `train` job, a teacher trained on its
    source task (`teacher`), or a pipeline's baseline)."""
    if data.y is None:
        raise JobFailedError("unlabelled_data", f"{stage}: the dataset has no labels")
    net, config = build_from_spec(ctx, spec, data, data.num_classes, seed=seed)
    trained = Trained(net.to(ctx.device), config, data.class_names, data.task)
    # A `train` job may start from weights (torchvision, checkpoint, model): fine-tuning.
    stage_spec = resolve_stage(
        stage_spec, data, pretrained=spec.source != "scratch", teacher=teacher
    )
    role = "the teacher " if teacher else ""
    if stage_done(ctx, stage, net) is None:
        run_fit_stage(
            ctx,
            stage=stage,
            net=net,
            data=data,
            spec_stage=stage_spec,
            objective=supervised(stage_spec.label_smoothing),
            seed=seed,
            eval_fn=Accuracy(eval_data) if eval_data is not None else None,
            description=f"training {role}{config.arch} on {data.description} ({len(data)} images)",
        )
    return trained
