"""The stages of every job kind: train, distill, finetune, and the full pipeline.

Each stage is: load its data, build or load its networks, `fit`, save the result. A stage
whose result is already saved (the job resumed after its worker died) is skipped; a stage
interrupted mid-way resumes from its last epoch's checkpoint inside `fit`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from app.config import Settings
from app.schemas.job_spec import DatasetRef, ModelSpec, TrainJobSpec, default_evaluate
from worker.checkpoints import CheckpointStore
from worker.control import JobControl
from worker.data import InMemoryData, load_dataset
from worker.export import ExportedModel, export_model
from worker.lookups import Lookups
from worker.nets import Network, NetworkConfig, build_network, replace_head
from worker.reporting import Reporter
from worker.train import cross_entropy_objective, evaluate, fit

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
    if spec.source == "scratch":
        config = config_for_data(spec, data, num_classes)
        return build_network(config), config
    if spec.source == "torchvision":
        return _pretrained_torchvision(ctx, spec, data, num_classes)
    if spec.source == "checkpoint":
        assert spec.checkpoint_id is not None
        path, arch, ckpt_classes, meta = ctx.lookups.checkpoint(spec.checkpoint_id)
        source = NetworkConfig(
            arch=arch,
            num_classes=ckpt_classes,
            in_channels=int(meta.get("in_channels", data.channels)),
            image_size=data.image_size,
            width=float(meta.get("width", 1.0)),
            input_size=spec.input_size or meta.get("input_size"),
            scale=data.scale,
            mean=meta.get("mean") or data.channel_stats()[0],
            std=meta.get("std") or data.channel_stats()[1],
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


def run_fit_stage(
    ctx: JobContext,
    *,
    stage: str,
    net: Network,
    data: InMemoryData,
    eval_data: InMemoryData | None,
    spec_stage: Any,
    objective: Any,
    seed: int,
    description: str = "",
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit `net` as stage `stage` unless that stage is already done; returns its record."""
    done = ctx.store.load_done(stage)
    if done is not None:
        state, record = done
        net.load_state_dict(state)
        ctx.reporter.log(f"stage {stage} already finished; reusing its result", stage=stage)
        return record
    ctx.reporter.stage(stage, epochs=spec_stage.epochs, description=description)
    net.to(ctx.device)
    eval_fn = None
    if eval_data is not None and eval_data.y is not None:

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return evaluate(m, eval_data, device=ctx.device)

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
    record = {"history": result.history, "seconds": result.seconds}
    ctx.store.save_done(stage, net, record)
    return record


def finish_model(
    ctx: JobContext,
    net: Network,
    config: NetworkConfig,
    *,
    class_names: list[str],
    metrics: dict[str, Any],
    model_id: str,
) -> ExportedModel:
    net = net.to("cpu").eval()
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
    )


# -------------------------------------------------------------------------- job kinds
def run_train(ctx: JobContext, spec: TrainJobSpec, *, model_id: str) -> JobOutcome:
    """Supervised training of `spec.model` on `spec.train`, evaluated on `spec.evaluate`."""
    train_data = load_data(ctx, spec.train.dataset, seed=spec.seed)
    if train_data.y is None:
        raise JobFailedError("unlabelled_data", "train.dataset has no labels; training needs them")
    evaluate_spec = spec.evaluate or default_evaluate(spec.train.dataset)
    eval_data = load_data(ctx, evaluate_spec.dataset, seed=spec.seed)
    net, config = build_model(ctx, spec.model, train_data, train_data.num_classes, seed=spec.seed)
    record = run_fit_stage(
        ctx,
        stage="train",
        net=net,
        data=train_data,
        eval_data=eval_data,
        spec_stage=spec.train,
        objective=cross_entropy_objective(spec.train.label_smoothing),
        seed=spec.seed,
        description=f"training {config.arch} on {train_data.description} ({len(train_data)} images)",
    )
    final = evaluate(net, eval_data, device=ctx.device)
    metrics = {"accuracy": final["accuracy"], "loss": final["loss"], "eval_samples": len(eval_data)}
    if record["history"]:
        metrics["train_loss"] = record["history"][-1]["train_loss"]
    exported = finish_model(
        ctx, net, config, class_names=train_data.class_names, metrics=metrics, model_id=model_id
    )
    return JobOutcome(model=exported, metrics=metrics)


def run_job_kind(ctx: JobContext, spec: Any, *, model_id: str) -> JobOutcome:
    """Dispatch on the spec's kind."""
    if isinstance(spec, TrainJobSpec):
        return run_train(ctx, spec, model_id=model_id)
    raise JobFailedError("not_supported", f"job kind {spec.kind!r} is not supported yet")
