"""The stages of every job kind: train, distill, finetune, and the full pipeline.

Each stage is: load its data, build or load its networks, `fit`, save the result. A stage
whose result is already saved (the job resumed after its worker died) is skipped; a stage
interrupted mid-way resumes from its last epoch's checkpoint inside `fit`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from app.config import Settings
from app.schemas.job_spec import (
    Constraints,
    DatasetRef,
    DistillJobSpec,
    DistillStage,
    FinetuneJobSpec,
    FinetuneStage,
    ModelSpec,
    PipelineJobSpec,
    SizeSearch,
    StageSpec,
    TrainJobSpec,
    default_evaluate,
)
from worker.checkpoints import CheckpointStore
from worker.control import JobControl
from worker.data import InMemoryData, load_dataset
from worker.distill import (
    DistillObjective,
    FeatureHook,
    TeacherOutputs,
    ViewSchedule,
    compute_teacher_outputs,
    feature_cache_fits,
)
from worker.export import ExportedModel, export_model, measure_latency_ms
from worker.lookups import Lookups
from worker.losses import HintAdapter, soft_target_kl
from worker.nets import (
    Network,
    NetworkConfig,
    build_network,
    count_params,
    default_hint_layer,
    head_name,
    replace_head,
    size_bytes_fp32,
)
from worker.reporting import Reporter
from worker.train import Objective, cross_entropy_objective, evaluate, fit, squared_error

log = logging.getLogger(__name__)


class JobFailedError(RuntimeError):
    """A failure with a code and a message the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JobContext:
    job_id: str
    owner: str
    name: str | None
    settings: Settings
    device: torch.device
    control: JobControl
    reporter: Reporter
    store: CheckpointStore
    lookups: Lookups


@dataclass
class JobOutcome:
    """What a successful job hands back to the worker for the final transaction."""

    model: ExportedModel | None
    metrics: dict[str, Any]
    report: dict[str, Any] | None = None


# --------------------------------------------------------------------------- helpers
def load_data(ctx: JobContext, ref: DatasetRef, *, seed: int) -> InMemoryData:
    uploaded = ctx.lookups.dataset_path(ref.id) if ref.id is not None else None
    return load_dataset(ref, data_root=ctx.settings.data_root, seed=seed, uploaded_path=uploaded)


def config_for_data(spec: ModelSpec, data: InMemoryData, num_classes: int) -> NetworkConfig:
    mean, std = data.channel_stats()
    assert spec.arch is not None
    return NetworkConfig(
        arch=spec.arch,
        num_classes=num_classes,
        in_channels=data.channels,
        image_size=data.image_size,
        width=spec.width,
        input_size=spec.input_size,
        scale=data.scale,
        mean=mean,
        std=std,
    )


def adapt_config(source: NetworkConfig, data: InMemoryData, num_classes: int) -> NetworkConfig:
    """A trained network's config, re-pointed at new data (its channels, size and scale).

    Normalisation stays the source's: its weights were trained with it. Statistics are on
    the 0-1 scale, so a change of scale (0-255 data for a 0-1 model) keeps them valid.
    """
    if data.channels != source.in_channels and not (data.channels == 1 and source.in_channels == 3):
        raise JobFailedError(
            "incompatible_data",
            f"the model takes {source.in_channels}-channel inputs and the data has {data.channels}",
        )
    mean, std = source.mean, source.std
    if data.channels == 1 and source.in_channels == 3 and mean and std:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    return NetworkConfig(
        arch=source.arch,
        num_classes=num_classes,
        in_channels=data.channels,
        image_size=data.image_size,
        width=source.width,
        input_size=source.input_size,
        scale=data.scale,
        mean=mean,
        std=std,
    )


def load_weights(net: Network, state: dict[str, torch.Tensor], *, what: str) -> None:
    """Load a Network's state, or a bare backbone's (an uploaded torchvision checkpoint).

    The preprocessing buffers of the new config win over those in the file: the network
    may have been re-pointed at data of another scale or channel count.
    """
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = net.state_dict()
    state = {**state, **{k: own[k] for k in ("scale", "mean", "std")}}
    # The head may differ in size (new classes): load everything else, keep the new head.
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        state.pop(k)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in mismatched]
    if missing or unexpected:
        raise JobFailedError(
            "incompatible_weights",
            f"{what} does not fit the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}",
        )


def build_model(
    ctx: JobContext, spec: ModelSpec, data: InMemoryData, num_classes: int, *, seed: int
) -> tuple[Network, NetworkConfig]:
    """A network for `spec`, sized for `data` and `num_classes` outputs."""
    torch.manual_seed(seed)  # the same seed builds the same initial weights
    if spec.source in ("scratch", "train"):
        config = config_for_data(spec, data, num_classes)
        return build_network(config), config
    if spec.source == "torchvision":
        return _pretrained_torchvision(ctx, spec, data, num_classes)
    if spec.source == "checkpoint":
        assert spec.checkpoint_id is not None
        path, arch, ckpt_classes, meta = ctx.lookups.checkpoint(spec.checkpoint_id)
        in_channels = int(meta.get("in_channels", data.channels))
        mean, std = meta.get("mean"), meta.get("std")
        if not mean or not std:
            # No statistics came with the upload: use the data's, one value per channel of
            # the checkpoint (a grey set's single value repeated for an RGB checkpoint).
            data_mean, data_std = data.channel_stats()
            repeat = in_channels if len(data_mean) == 1 else 1
            mean, std = data_mean * repeat, data_std * repeat
        source = NetworkConfig(
            arch=arch,
            num_classes=ckpt_classes,
            in_channels=in_channels,
            image_size=data.image_size,
            width=float(meta.get("width", 1.0)),
            input_size=spec.input_size or meta.get("input_size"),
            scale=data.scale,
            mean=mean,
            std=std,
        )
        config = adapt_config(source, data, ckpt_classes)
        net = build_network(config)
        load_weights(net, load_file(str(path)), what=f"checkpoint {spec.checkpoint_id}")
    elif spec.source == "model":
        assert spec.model_id is not None
        folder, meta = ctx.lookups.model(spec.model_id)
        source = NetworkConfig.from_json(meta["network"])
        config = adapt_config(source, data, source.num_classes)
        net = build_network(config)
        load_weights(
            net, load_file(str(folder / "model.safetensors")), what=f"model {spec.model_id}"
        )
    else:
        raise JobFailedError("bad_spec", f"model source {spec.source!r} cannot be built here")
    if config.num_classes != num_classes:
        replace_head(net.backbone, num_classes)
        config.num_classes = num_classes
    return net, config


def _pretrained_torchvision(
    ctx: JobContext, spec: ModelSpec, data: InMemoryData, num_classes: int
) -> tuple[Network, NetworkConfig]:
    import torchvision

    assert spec.arch is not None and spec.weights is not None
    weights = torchvision.models.get_model_weights(spec.arch)[spec.weights]
    # Pretrained weights expect the normalisation they were trained with.
    transforms = weights.transforms()
    mean, std = list(transforms.mean), list(transforms.std)
    if data.channels == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    config = NetworkConfig(
        arch=spec.arch,
        num_classes=num_classes,
        in_channels=data.channels,
        image_size=data.image_size,
        width=spec.width,
        input_size=spec.input_size,
        scale=data.scale,
        mean=mean,
        std=std,
    )
    if ctx.settings.torch_home is not None:
        torch.hub.set_dir(str(Path(ctx.settings.torch_home) / "hub"))
    try:
        net = build_network(config, weights=spec.weights)
    except (OSError, RuntimeError) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise JobFailedError(
            "weights_unavailable",
            f"pretrained weights {spec.arch}/{spec.weights} are not in the torch hub cache and "
            f"could not be downloaded ({exc}). Place {weights.url} at {cache}.",
        ) from exc
    return net, config


@dataclass
class Trained:
    """A network, the config that rebuilds it, and the names of its output classes."""

    net: Network
    config: NetworkConfig
    class_names: list[str]
    # "regression": the outputs are float targets (class_names name them: target_i).
    task: str = "classification"


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
    net: Network,
    data: InMemoryData,
    spec_stage: StageSpec,
    objective: Objective,
    seed: int,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    description: str = "",
    announce: bool = True,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit `net` as stage `stage` (resuming inside the stage), then save its result.

    `announce=False`: the caller already announced the stage (work before the fit, such
    as caching the teacher's outputs, belongs to it)."""
    if announce:
        ctx.reporter.stage(stage, epochs=spec_stage.epochs, description=description)
    net.to(ctx.device)
    result = fit(
        stage_name=stage,
        model=net,
        train=data,
        stage=spec_stage,
        objective=objective,
        device=ctx.device,
        seed=seed,
        control=ctx.control,
        sink=ctx.reporter,
        checkpoints=ctx.store,
        eval_fn=eval_fn,
        **fit_kwargs,
    )
    record = {"history": result.history, "seconds": round(result.seconds, 3)}
    ctx.store.save_done(stage, net, record)
    return record


def accuracy_fn(
    ctx: JobContext, data: InMemoryData
) -> Callable[[torch.nn.Module], dict[str, float]]:
    def fn(model: torch.nn.Module) -> dict[str, float]:
        return evaluate(model, data, device=ctx.device)

    return fn


def retarget(
    ctx: JobContext,
    trained: Trained,
    data: InMemoryData,
    num_classes: int,
    *,
    seed: int,
    read_only: bool = False,
) -> Trained:
    """`trained` re-pointed at `data` (its scale, channels and size), with a new head if
    the number of classes changes. The original network is left as it was.

    `read_only`: the caller only runs the network (a teacher); when nothing changes it
    gets `trained` itself instead of a copy (copying a resnet costs a noticeable fraction
    of a second, more than a small distill epoch)."""
    config = adapt_config(trained.config, data, trained.config.num_classes)
    if read_only and num_classes == config.num_classes and config == trained.config:
        trained.net.to(ctx.device)
        return trained
    net = build_network(config)
    load_weights(net, trained.net.state_dict(), what="the trained network")
    if num_classes != config.num_classes:
        torch.manual_seed(seed)
        replace_head(net.backbone, num_classes)
        config.num_classes = num_classes
    return Trained(net.to(ctx.device), config, trained.class_names, trained.task)


def same_classes(trained: Trained, data: InMemoryData) -> bool:
    """Whether `trained` predicts what `data` labels: its classes (or regression targets)."""
    return (
        data.y is not None and trained.task == data.task and trained.class_names == data.class_names
    )


# ----------------------------------------------------------------------------- teacher
def obtain_teacher(ctx: JobContext, spec: ModelSpec, *, data: InMemoryData, seed: int) -> Trained:
    """The teacher: trained here on its source task (stage "teacher"), or loaded.

    `data` (the distill set) sizes a loaded teacher's input; every later stage re-points
    it at its own data.
    """
    if spec.source == "train":
        assert spec.train is not None
        source = load_data(ctx, spec.train.dataset, seed=seed)
        if source.y is None:
            raise JobFailedError("unlabelled_data", "teacher.train.dataset has no labels")
        source_eval = load_data(ctx, default_evaluate(spec.train.dataset).dataset, seed=seed)
        net, config = build_model(
            ctx,
            spec.model_copy(update={"source": "scratch", "train": None}),
            source,
            source.num_classes,
            seed=seed,
        )
        if stage_done(ctx, "teacher", net) is None:
            run_fit_stage(
                ctx,
                stage="teacher",
                net=net,
                data=source,
                spec_stage=spec.train,
                objective=cross_entropy_objective(spec.train.label_smoothing),
                seed=seed,
                eval_fn=accuracy_fn(ctx, source_eval),
                description=f"training the teacher {config.arch} on {source.description} "
                f"({len(source)} images)",
            )
        return Trained(net, config, source.class_names, source.task)
    net, config = build_model(ctx, spec, data, _source_classes(ctx, spec), seed=seed)
    return Trained(
        net.to(ctx.device),
        config,
        _class_names(ctx, spec, config.num_classes),
        _model_task(ctx, spec),
    )


def _source_classes(ctx: JobContext, spec: ModelSpec) -> int:
    if spec.source == "checkpoint":
        assert spec.checkpoint_id is not None
        return ctx.lookups.checkpoint(spec.checkpoint_id)[2]
    if spec.source == "model":
        assert spec.model_id is not None
        return int(ctx.lookups.model(spec.model_id)[1]["num_classes"])
    if spec.source == "torchvision":
        return len(_torchvision_categories(spec))
    raise JobFailedError("bad_spec", f"a {spec.source} model has no classes of its own")


def _class_names(ctx: JobContext, spec: ModelSpec, k: int) -> list[str]:
    if spec.source == "model":
        assert spec.model_id is not None
        return list(ctx.lookups.model(spec.model_id)[1]["classes"])
    if spec.source == "torchvision":
        return _torchvision_categories(spec)
    if spec.source == "checkpoint":
        assert spec.checkpoint_id is not None
        names = ctx.lookups.checkpoint(spec.checkpoint_id)[3].get("class_names")
        if names and len(names) == k:
            return list(names)
    return [str(i) for i in range(k)]


def _model_task(ctx: JobContext, spec: ModelSpec) -> str:
    if spec.source == "model" and spec.model_id is not None:
        return str(ctx.lookups.model(spec.model_id)[1].get("task", "classification"))
    return "classification"


def _torchvision_categories(spec: ModelSpec) -> list[str]:
    import torchvision

    assert spec.arch is not None and spec.weights is not None
    weights = torchvision.models.get_model_weights(spec.arch)[spec.weights]
    return list(weights.meta["categories"])


# ----------------------------------------------------------------------------- distill
def choose_teacher_outputs(stage: DistillStage) -> str:
    """`auto`: cache without augmentation; with it, views when fewer than the epochs."""
    if stage.teacher_outputs != "auto":
        return stage.teacher_outputs
    if stage.augment == "none":
        return "cache"
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
    data = load_data(ctx, stage_spec.dataset, seed=seed)
    k = teacher.config.num_classes
    student_net, student_config = build_model(ctx, student_spec, data, k, seed=seed)
    student = Trained(student_net.to(ctx.device), student_config, teacher.class_names, teacher.task)
    if stage_done(ctx, stage, student.net) is not None:
        return student
    mode = choose_teacher_outputs(stage_spec)
    loss = stage_spec.loss
    ctx.reporter.stage(
        stage,
        epochs=stage_spec.epochs,
        description=f"distilling {teacher.config.arch} into {student.config.arch} on "
        f"{data.description} ({len(data)} images, {loss.type} loss, teacher outputs: {mode})",
    )
    teacher_here = retarget(ctx, teacher, data, k, seed=seed, read_only=True)
    use_labels = same_classes(teacher, data)
    if loss.alpha < 1.0 and not use_labels:
        ctx.reporter.log(
            "the distill set's labels are not the teacher's classes: distilling without "
            "hard labels (alpha taken as 1)",
            stage=stage,
        )

    # Hint layers, their hooks and the learned adapter.
    adapter = student_hook = teacher_hook = None
    t_layer = s_layer = None
    if loss.type == "hint":
        t_layer = loss.teacher_layer or default_hint_layer(teacher.config.arch)
        s_layer = loss.student_layer or default_hint_layer(student.config.arch)
        if t_layer is None or s_layer is None:
            raise JobFailedError(
                "bad_spec", "hint distillation needs teacher_layer and student_layer"
            )
        student_hook = FeatureHook(student.net, s_layer)
        probe = data.x[:2].to(ctx.device).float()
        with torch.no_grad():
            t_probe = compute_teacher_outputs(
                teacher_here.net,
                InMemoryData(data.x[:2], None, data.class_names, data.scale),
                device=ctx.device,
                feature_layer=t_layer,
            ).features
            student.net.eval()
            student.net(probe)
            s_probe = student_hook.take()
            student.net.train()
        assert t_probe is not None
        torch.manual_seed(seed)
        adapter = HintAdapter(s_probe.shape, t_probe.shape).to(ctx.device)
        if mode in ("cache", "views") and not feature_cache_fits(
            teacher_here.net, data, t_layer, ctx.device
        ):
            ctx.reporter.log("hint features too large to cache: live teacher passes", stage=stage)
            mode = "live"
        if mode == "live":
            teacher_hook = FeatureHook(teacher_here.net, t_layer)

    views = None
    cache = None
    fit_stage: StageSpec = stage_spec
    on_epoch_start = None
    if mode == "cache":
        ctx.reporter.log(f"caching the teacher's outputs for {len(data)} samples", stage=stage)
        cache = compute_teacher_outputs(
            teacher_here.net, data, device=ctx.device, control=ctx.control, feature_layer=t_layer
        )
    elif mode == "views":
        views = ViewSchedule(
            n=len(data),
            views=stage_spec.teacher_views,
            kind=stage_spec.augment,
            image_size=data.image_size,
            seed=seed,
        )
        ctx.reporter.log(
            f"caching the teacher's outputs for {stage_spec.teacher_views} augmented views of "
            f"{len(data)} samples",
            stage=stage,
        )
        parts = [
            compute_teacher_outputs(
                teacher_here.net,
                data,
                device=ctx.device,
                control=ctx.control,
                feature_layer=t_layer,
                transform=lambda x, idx, v=v: views.apply(x, idx, view=v),
            )
            for v in range(stage_spec.teacher_views)
        ]
        cache = TeacherOutputs(
            logits=torch.cat([p.logits for p in parts]),
            features=None if t_layer is None else torch.cat([p.features for p in parts]),  # type: ignore[misc]
        )
        # The objective applies the view; the loop must not augment again.
        fit_stage = stage_spec.model_copy(update={"augment": "none"})
        on_epoch_start = views.set_epoch

    objective = DistillObjective(
        teacher=teacher_here.net,
        loss=loss,
        use_labels=use_labels,
        cache=cache,
        adapter=adapter,
        student_hook=student_hook,
        teacher_hook=teacher_hook,
        views=views,
    )
    eval_fn = distill_eval_fn(
        ctx, teacher_here, stage_spec.dataset, seed=seed, use_labels=use_labels
    )
    try:
        run_fit_stage(
            ctx,
            stage=stage,
            net=student.net,
            data=data,
            spec_stage=fit_stage,
            objective=objective,
            seed=seed,
            eval_fn=eval_fn,
            announce=False,
            extra_modules=torch.nn.ModuleDict({"adapter": adapter})
            if adapter is not None
            else None,
            on_epoch_start=on_epoch_start,
        )
    finally:
        for hook in (student_hook, teacher_hook):
            if hook is not None:
                hook.remove()
    return student


def distill_eval_fn(
    ctx: JobContext, teacher: Trained, ref: DatasetRef, *, seed: int, use_labels: bool
) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """Per-epoch: agreement with the teacher on the distill set's held-out split (and
    accuracy, where its labels are the teacher's classes)."""
    if ref.split != "train" or teacher.task == "regression":
        # Agreement of top classes means nothing for regression outputs.
        return None
    held_out = load_data(
        ctx, ref.model_copy(update={"split": "test", "samples_per_class": None}), seed=seed
    )
    if len(held_out) == 0:
        return None
    teacher_pred: list[torch.Tensor] = []  # computed at the first evaluation, then kept

    @torch.inference_mode()
    def fn(model: torch.nn.Module) -> dict[str, float]:
        if not teacher_pred:
            outputs = compute_teacher_outputs(teacher.net, held_out, device=ctx.device)
            teacher_pred.append(outputs.logits.argmax(1))
        model.eval()
        preds = []
        for start in range(0, len(held_out), 512):
            x = held_out.x[start : start + 512].to(ctx.device).float()
            preds.append(model(x).argmax(1))
        pred = torch.cat(preds)
        out = {"agreement": float((pred == teacher_pred[0]).float().mean())}
        if use_labels and held_out.y is not None:
            out["accuracy"] = float((pred == held_out.y.to(pred.device)).float().mean())
        return out

    return fn


# ---------------------------------------------------------------------------- finetune
class FinetuneObjective:
    """L_T on the target labels (cross-entropy, or the squared error to one-hot targets;
    the squared error for regression targets), plus `kd_weight` times the soft-target
    term from a teacher that predicts the same classes."""

    def __init__(
        self, stage: FinetuneStage, teacher: torch.nn.Module | None, cache: torch.Tensor | None
    ) -> None:
        self.stage = stage
        self.teacher = teacher.eval() if teacher is not None else None
        self.cache = cache

    def __call__(self, model, x, y, idx):
        if y is None:
            raise JobFailedError("unlabelled_data", "fine-tuning needs labels")
        logits = model(x)
        if y.is_floating_point():
            # Regression targets: the squared error, whatever `loss` says (the spec check
            # refuses cross_entropy for them).
            task = squared_error(logits, y)
        elif self.stage.loss == "mse":
            task = squared_error(logits, F.one_hot(y, logits.shape[1]))
        else:
            task = F.cross_entropy(logits, y, label_smoothing=self.stage.label_smoothing)
        w = self.stage.kd_weight
        if w == 0 or self.teacher is None:
            return task, logits
        if self.cache is not None:
            t_logits = self.cache[idx.to(self.cache.device)]
        else:
            with torch.no_grad():
                t_logits = self.teacher(x)
        return (1 - w) * task + w * soft_target_kl(logits, t_logits, self.stage.temperature), logits


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
) -> Trained:
    """Fine-tune `model` on the target `data`, replacing its head if the classes change."""
    if data.y is None:
        raise JobFailedError("unlabelled_data", "finetune.dataset has no labels")
    target = retarget(ctx, model, data, data.num_classes, seed=seed)
    target.class_names, target.task = data.class_names, data.task
    if stage_done(ctx, stage, target.net) is not None:
        return target
    teacher_net, cache = None, None
    if stage_spec.kd_weight > 0 and teacher is not None:
        if not same_classes(teacher, data):
            raise JobFailedError(
                "bad_spec", "finetune.kd_weight needs a teacher that predicts the target's classes"
            )
        teacher_net = retarget(ctx, teacher, data, data.num_classes, seed=seed, read_only=True).net
        if stage_spec.augment == "none":
            cache = compute_teacher_outputs(
                teacher_net, data, device=ctx.device, control=ctx.control
            ).logits

    head = "backbone." + head_name(target.net.backbone)

    def freeze(epoch: int) -> None:
        # The first `freeze_backbone_epochs` epochs train the new head alone.
        frozen = epoch < stage_spec.freeze_backbone_epochs
        for name, p in target.net.named_parameters():
            p.requires_grad_(not frozen or name.startswith(head + "."))

    run_fit_stage(
        ctx,
        stage=stage,
        net=target.net,
        data=data,
        spec_stage=stage_spec,
        objective=FinetuneObjective(stage_spec, teacher_net, cache),
        seed=seed,
        eval_fn=accuracy_fn(ctx, eval_data) if eval_data is not None else None,
        description=f"fine-tuning {target.config.arch} on {data.description} ({len(data)} images)",
        on_epoch_start=freeze if stage_spec.freeze_backbone_epochs else None,
    )
    for p in target.net.parameters():
        p.requires_grad_(True)
    return target


def train_from_scratch(
    ctx: JobContext,
    spec: ModelSpec,
    stage_spec: StageSpec,
    *,
    data: InMemoryData,
    eval_data: InMemoryData | None,
    seed: int,
    stage: str,
) -> Trained:
    """Supervised training of a fresh network (a `train` job, or a pipeline's baseline)."""
    if data.y is None:
        raise JobFailedError("unlabelled_data", f"{stage}: the dataset has no labels")
    net, config = build_model(ctx, spec, data, data.num_classes, seed=seed)
    trained = Trained(net.to(ctx.device), config, data.class_names, data.task)
    if stage_done(ctx, stage, net) is None:
        run_fit_stage(
            ctx,
            stage=stage,
            net=net,
            data=data,
            spec_stage=stage_spec,
            objective=cross_entropy_objective(stage_spec.label_smoothing),
            seed=seed,
            eval_fn=accuracy_fn(ctx, eval_data) if eval_data is not None else None,
            description=f"training {config.arch} on {data.description} ({len(data)} images)",
        )
    return trained


def finish_model(
    ctx: JobContext,
    net: Network,
    config: NetworkConfig,
    *,
    class_names: list[str],
    metrics: dict[str, Any],
    model_id: str,
    task: str = "classification",
) -> ExportedModel:
    """Write the served model's artifacts (see worker.export)."""
    net = copy.deepcopy(net).to("cpu").eval()
    folder = ctx.settings.artifact_dir / "models" / model_id
    return export_model(
        net,
        config,
        model_id=model_id,
        folder=folder,
        class_names=class_names,
        metrics=metrics,
        job_id=ctx.job_id,
        name=ctx.name,
        task=task,
    )


# ----------------------------------------------------------------------------- figures
def serving_device(ctx: JobContext) -> torch.device:
    wanted = ctx.settings.serving_device
    return torch.device("cuda" if wanted == "cuda" and torch.cuda.is_available() else "cpu")


def figures(ctx: JobContext, trained: Trained, eval_data: InMemoryData | None) -> dict[str, Any]:
    """Accuracy on the evaluation set (when the model predicts its classes), params, size
    of the fp32 weights, and batch-1 latency on the serving device."""
    net = copy.deepcopy(trained.net).eval()
    out: dict[str, Any] = {
        "arch": trained.config.arch,
        "width": trained.config.width,
        "params": count_params(net),
        "size_bytes": size_bytes_fp32(net),
        "latency_ms": round(
            measure_latency_ms(
                net,
                [trained.config.in_channels, trained.config.image_size, trained.config.image_size],
                device=serving_device(ctx),
            ),
            4,
        ),
        "accuracy": None,
    }
    if eval_data is not None and same_classes(trained, eval_data):
        result = evaluate(net.to(ctx.device), eval_data, device=ctx.device)
        out["accuracy"] = result.get("accuracy")
        if trained.task == "regression":
            out["mse"], out["mae"] = result["mse"], result["mae"]
    elif eval_data is not None:
        out["accuracy_note"] = (
            "predicts other classes than the evaluation set's "
            f"({', '.join(trained.class_names[:5])}{'...' if len(trained.class_names) > 5 else ''})"
        )
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# --------------------------------------------------------------------------- job kinds
def run_train(ctx: JobContext, spec: TrainJobSpec, *, model_id: str) -> JobOutcome:
    """Supervised training of `spec.model` on `spec.train`, evaluated on `spec.evaluate`."""
    data = load_data(ctx, spec.train.dataset, seed=spec.seed)
    evaluate_spec = spec.evaluate or default_evaluate(spec.train.dataset)
    eval_data = load_data(ctx, evaluate_spec.dataset, seed=spec.seed)
    trained = train_from_scratch(
        ctx, spec.model, spec.train, data=data, eval_data=eval_data, seed=spec.seed, stage="train"
    )
    return _outcome(ctx, trained, eval_data, model_id=model_id)


def _outcome(
    ctx: JobContext,
    trained: Trained,
    eval_data: InMemoryData,
    *,
    model_id: str,
    report: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> JobOutcome:
    metrics: dict[str, Any] = {"eval_samples": len(eval_data), **(extra or {})}
    if same_classes(trained, eval_data):
        metrics.update(evaluate(trained.net, eval_data, device=ctx.device))
    exported = finish_model(
        ctx,
        trained.net,
        trained.config,
        class_names=trained.class_names,
        metrics=metrics,
        model_id=model_id,
        task=trained.task,
    )
    backends = exported.meta.get("backends") or {}
    preferred = backends.get("preferred")
    if report is not None and preferred in backends:
        # report latencies are PyTorch eager for teacher and student alike (comparable);
        # this is what the backend that will serve the student takes.
        wanted = ctx.settings.serving_backend
        backend = preferred if wanted == "auto" or wanted not in backends else wanted
        report["student"]["serving"] = {
            "backend": backend,
            "latency_ms": backends[backend].get("batch_1_ms"),
            "batch_32_ms": backends[backend].get("batch_32_ms"),
        }
    return JobOutcome(model=exported, metrics=metrics, report=report)


def run_distill(ctx: JobContext, spec: DistillJobSpec, *, model_id: str) -> JobOutcome:
    distill_data = load_data(ctx, spec.distill.dataset, seed=spec.seed)
    teacher = obtain_teacher(ctx, spec.teacher, data=distill_data, seed=spec.seed)
    student = distill(ctx, teacher, spec.student, spec.distill, seed=spec.seed)
    evaluate_spec = spec.evaluate or default_evaluate(spec.distill.dataset)
    eval_data = load_data(ctx, evaluate_spec.dataset, seed=spec.seed)
    teacher_here = retarget(
        ctx, teacher, eval_data, teacher.config.num_classes, seed=spec.seed, read_only=True
    )
    report = _report(ctx, teacher_here, student, eval_data, strategy=None)
    return _outcome(ctx, student, eval_data, model_id=model_id, report=report)


def run_finetune(ctx: JobContext, spec: FinetuneJobSpec, *, model_id: str) -> JobOutcome:
    data = load_data(ctx, spec.finetune.dataset, seed=spec.seed)
    evaluate_spec = spec.evaluate or default_evaluate(spec.finetune.dataset)
    eval_data = load_data(ctx, evaluate_spec.dataset, seed=spec.seed)
    net, config = build_model(
        ctx, spec.model, data, _model_classes(ctx, spec.model, data), seed=spec.seed
    )
    names = (
        _class_names(ctx, spec.model, config.num_classes)
        if spec.model.source != "scratch"
        else data.class_names
    )
    task = _model_task(ctx, spec.model) if spec.model.source != "scratch" else data.task
    model = Trained(net.to(ctx.device), config, names, task)
    teacher = None
    if spec.teacher is not None:
        teacher = obtain_teacher(ctx, spec.teacher, data=data, seed=spec.seed)
    tuned = finetune(
        ctx, model, spec.finetune, data=data, eval_data=eval_data, teacher=teacher, seed=spec.seed
    )
    return _outcome(ctx, tuned, eval_data, model_id=model_id)


def _model_classes(ctx: JobContext, spec: ModelSpec, data: InMemoryData) -> int:
    return data.num_classes if spec.source in ("scratch", "train") else _source_classes(ctx, spec)


def _report(
    ctx: JobContext,
    teacher: Trained,
    student: Trained,
    eval_data: InMemoryData,
    *,
    strategy: str | None,
) -> dict[str, Any]:
    t, s = figures(ctx, teacher, eval_data), figures(ctx, student, eval_data)
    report: dict[str, Any] = {
        "teacher": t,
        "student": s,
        "compression": ratio(t["params"], s["params"]),
        "speedup": ratio(t["latency_ms"], s["latency_ms"]),
        "eval_samples": len(eval_data),
        "latency_device": str(serving_device(ctx)),
    }
    if strategy is not None:
        report["strategy"] = strategy
    return report


def run_pipeline(ctx: JobContext, spec: PipelineJobSpec, *, model_id: str) -> JobOutcome:
    """Teacher -> student -> target, in the order `spec.strategy` names."""
    seed = spec.seed
    target = load_data(ctx, spec.finetune.dataset, seed=seed)
    evaluate_spec = spec.evaluate or default_evaluate(spec.finetune.dataset)
    eval_data = load_data(ctx, evaluate_spec.dataset, seed=seed)
    distill_data = load_data(ctx, spec.distill.dataset, seed=seed)
    teacher = obtain_teacher(ctx, spec.teacher, data=distill_data, seed=seed)
    del distill_data  # each stage loads its own, filtered copy
    if spec.strategy == "finetune_then_distill":
        # Adapt the teacher to the target first: it then teaches the target's classes.
        teacher = finetune(
            ctx,
            teacher,
            spec.finetune.model_copy(update={"kd_weight": 0.0}),
            data=target,
            eval_data=eval_data,
            teacher=None,
            seed=seed,
            stage="teacher_finetune",
        )
    search = spec.student if isinstance(spec.student, SizeSearch) else None
    candidates = search.candidates if search is not None else [spec.student]
    assert all(isinstance(c, ModelSpec) for c in candidates)

    entries: list[dict[str, Any]] = []
    students: list[Trained | None] = []
    for i, candidate in enumerate(candidates):
        suffix = f".c{i}" if search is not None else ""
        skipped = static_violation(ctx, candidate, target, search.constraints) if search else None
        if skipped is not None:
            entries.append(
                {
                    "index": i,
                    "model": candidate.model_dump(exclude_none=True),
                    "skipped": skipped[0],
                    **skipped[1],
                }
            )
            students.append(None)
            continue
        student = distill(
            ctx, teacher, candidate, spec.distill, seed=seed, stage=f"distill{suffix}"
        )
        kd_teacher = teacher if spec.finetune.kd_weight > 0 else None
        student = finetune(
            ctx,
            student,
            spec.finetune,
            data=target,
            eval_data=eval_data,
            teacher=kd_teacher,
            seed=seed,
            stage=f"finetune{suffix}",
        )
        entries.append(
            {
                "index": i,
                "model": candidate.model_dump(exclude_none=True),
                "skipped": None,
                **figures(ctx, student, eval_data),
            }
        )
        students.append(student)

    chosen, reason, met = choose_candidate(entries, search.constraints if search else None)
    if chosen is None:
        raise JobFailedError(
            "constraints_unmet", f"no student candidate could be trained: {reason}"
        )
    student = students[chosen]
    assert student is not None
    teacher_here = retarget(
        ctx, teacher, eval_data, teacher.config.num_classes, seed=seed, read_only=True
    )
    report = _report(ctx, teacher_here, student, eval_data, strategy=spec.strategy)
    report["student"] = {
        k: v for k, v in entries[chosen].items() if k not in ("index", "model", "skipped")
    }
    report["compression"] = ratio(report["teacher"]["params"], report["student"]["params"])
    report["speedup"] = ratio(report["teacher"]["latency_ms"], report["student"]["latency_ms"])
    if search is not None:
        report["candidates"] = entries
        report["chosen"] = chosen
        report["chosen_reason"] = reason
        report["constraints_met"] = met
    if spec.baseline:
        chosen_spec = candidates[chosen].model_copy(update={"source": "scratch"})
        baseline = train_from_scratch(
            ctx,
            chosen_spec,
            spec.finetune,
            data=target,
            eval_data=eval_data,
            seed=seed,
            stage="baseline",
        )
        report["baseline"] = figures(ctx, baseline, eval_data)
        s_acc, b_acc = report["student"]["accuracy"], report["baseline"]["accuracy"]
        if s_acc is not None and b_acc is not None:
            report["gain_over_baseline"] = round(s_acc - b_acc, 4)
    report["stages"] = ctx.store.stage_seconds()
    return _outcome(ctx, student, eval_data, model_id=model_id, report=report)


def static_violation(
    ctx: JobContext, spec: ModelSpec, data: InMemoryData, constraints: Constraints
) -> tuple[str, dict[str, Any]] | None:
    """A size-search candidate that breaks a size or latency budget is skipped untrained:
    params, size and latency do not depend on the weights."""
    if not (constraints.max_params or constraints.max_size_bytes or constraints.max_latency_ms):
        return None
    net, config = build_model(ctx, spec, data, data.num_classes, seed=0)
    f = figures(ctx, Trained(net, config, data.class_names, data.task), None)
    for key, name, limit in (
        ("params", "max_params", constraints.max_params),
        ("size_bytes", "max_size_bytes", constraints.max_size_bytes),
        ("latency_ms", "max_latency_ms", constraints.max_latency_ms),
    ):
        if limit is not None and f[key] > limit:
            return f"{key} {f[key]} > {name} {limit}", f
    return None


def choose_candidate(
    entries: list[dict[str, Any]], constraints: Constraints | None
) -> tuple[int | None, str, bool]:
    """Step 4 of the method. With an accuracy floor: the smallest (fewest params)
    candidate that reaches it; without one: the most accurate. When none reaches the
    floor, the most accurate is served and the report says the floor was missed."""
    trained = [e for e in entries if e["skipped"] is None]
    if not trained:
        return None, "every candidate broke a size or latency budget", False
    floor = constraints.min_accuracy if constraints is not None else None
    if floor is not None:
        passing = [e for e in trained if (e["accuracy"] or 0.0) >= floor]
        for e in trained:
            if e not in passing:
                e["skipped"] = f"accuracy {e['accuracy']} < min_accuracy {floor}"
        if passing:
            best = min(passing, key=lambda e: (e["params"], -(e["accuracy"] or 0.0)))
            return best["index"], f"the smallest candidate with accuracy >= {floor}", True
        best = max(trained, key=lambda e: e["accuracy"] or 0.0)
        # Served after all: it is the one candidate not skipped.
        best["skipped"] = None
        return (
            best["index"],
            f"no candidate reached min_accuracy {floor}; serving the most accurate",
            False,
        )
    # Regression targets have no accuracy: the lowest squared error is the best.
    best = max(
        trained,
        key=lambda e: (e["accuracy"] or 0.0, -(e.get("mse") or 0.0), -e["params"]),
    )
    return best["index"], "the most accurate candidate within the budgets", True


def run_job_kind(ctx: JobContext, spec: Any, *, model_id: str) -> JobOutcome:
    """Dispatch on the spec's kind."""
    if isinstance(spec, TrainJobSpec):
        return run_train(ctx, spec, model_id=model_id)
    if isinstance(spec, DistillJobSpec):
        return run_distill(ctx, spec, model_id=model_id)
    if isinstance(spec, FinetuneJobSpec):
        return run_finetune(ctx, spec, model_id=model_id)
    if isinstance(spec, PipelineJobSpec):
        return run_pipeline(ctx, spec, model_id=model_id)
    raise JobFailedError("bad_spec", f"unknown job kind {getattr(spec, 'kind', None)!r}")
