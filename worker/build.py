"""Building the networks a job trains: from a resolved model source, sized for the data,
and re-pointed at other data (another scale, channel count, size, or set of classes).

A `Trained` is a network, the `NetworkConfig` that rebuilds it, and what its outputs
mean (class names, task); stages pass these along.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from app.core.archs import replace_head, torchvision_weights
from app.core.datasets import InMemoryData
from app.core.network import Network, NetworkConfig, build_network
from app.schemas.model_spec import ModelSpec
from worker.context import JobContext, JobFailedError
from worker.sources import ModelSource, resolve_source


@dataclass
class Trained:
    """A network, the config that rebuilds it, and the names of its output classes."""

    net: Network
    config: NetworkConfig
    class_names: list[str]
    # "regression": the outputs are float targets (class_names name them: target_i).
    task: str = "classification"


def config_for(
    arch: str,
    *,
    data: InMemoryData,
    num_classes: int,
    width: float,
    input_size: int | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> NetworkConfig:
    """A network's config for `data` (its channels, size and scale), with the
    normalisation the weights expect (None: none, inputs are only divided by the scale)."""
    return NetworkConfig(
        arch=arch,
        num_classes=num_classes,
        in_channels=data.channels,
        image_size=data.image_size,
        width=width,
        input_size=input_size,
        scale=data.scale,
        mean=mean,
        std=std,
    )


def config_for_data(spec: ModelSpec, data: InMemoryData, num_classes: int) -> NetworkConfig:
    """A fresh network's config: normalised by the data's own statistics."""
    mean, std = data.channel_stats()
    assert spec.arch is not None
    return config_for(
        spec.arch,
        data=data,
        num_classes=num_classes,
        width=spec.width,
        input_size=spec.input_size,
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
    return config_for(
        source.arch,
        data=data,
        num_classes=num_classes,
        width=source.width,
        input_size=source.input_size,
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
    source: ModelSource,
    data: InMemoryData,
    num_classes: int,
    *,
    seed: int,
    torch_home: Path | None,
) -> tuple[Network, NetworkConfig]:
    """A network from `source`, sized for `data`, with `num_classes` outputs (a new head
    when the source's differ)."""
    spec = source.spec
    torch.manual_seed(seed)  # the same seed builds the same initial weights
    if source.trained_here:
        config = config_for_data(spec, data, num_classes)
        return build_network(config), config
    if source.spec.source == "torchvision":
        net, config = _pretrained_torchvision(spec, data, num_classes, torch_home)
    elif source.checkpoint is not None:
        ckpt = source.checkpoint
        in_channels = int(ckpt.meta.get("in_channels", data.channels))
        mean, std = ckpt.meta.get("mean"), ckpt.meta.get("std")
        if not mean or not std:
            # No statistics came with the upload: use the data's, one value per channel of
            # the checkpoint (a grey set's single value repeated for an RGB checkpoint).
            data_mean, data_std = data.channel_stats()
            repeat = in_channels if len(data_mean) == 1 else 1
            mean, std = data_mean * repeat, data_std * repeat
        stored = config_for(
            ckpt.arch,
            data=data,
            num_classes=ckpt.num_classes,
            width=float(ckpt.meta.get("width", 1.0)),
            input_size=spec.input_size or ckpt.meta.get("input_size"),
            mean=mean,
            std=std,
        )
        stored.in_channels = in_channels  # what the weights take; adapt_config checks the data
        config = adapt_config(stored, data, ckpt.num_classes)
        net = build_network(config)
        load_weights(net, load_file(str(ckpt.path)), what=f"checkpoint {ckpt.id}")
    elif source.model is not None:
        stored = NetworkConfig.from_json(source.model.meta["network"])
        config = adapt_config(stored, data, stored.num_classes)
        net = build_network(config)
        load_weights(net, load_file(str(source.model.weights)), what=f"model {source.model.id}")
    else:
        raise JobFailedError("bad_spec", f"model source {spec.source!r} cannot be built here")
    if config.num_classes != num_classes:
        replace_head(net.backbone, num_classes)
        config.num_classes = num_classes
    return net, config


def build_from_spec(
    ctx: JobContext, spec: ModelSpec, data: InMemoryData, num_classes: int, *, seed: int
) -> tuple[Network, NetworkConfig]:
    """A network for `spec`, whatever its source (its rows read through the job's
    lookups), sized for `data`, with `num_classes` outputs."""
    source = resolve_source(ctx.lookups, spec)
    return build_model(source, data, num_classes, seed=seed, torch_home=ctx.settings.torch_home)


def _pretrained_torchvision(
    spec: ModelSpec, data: InMemoryData, num_classes: int, torch_home: Path | None
) -> tuple[Network, NetworkConfig]:
    assert spec.arch is not None and spec.weights is not None
    weights = torchvision_weights(spec.arch, spec.weights)
    # Pretrained weights expect the normalisation they were trained with.
    transforms = weights.transforms()
    mean, std = list(transforms.mean), list(transforms.std)
    if data.channels == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    config = config_for(
        spec.arch,
        data=data,
        num_classes=num_classes,
        width=spec.width,
        input_size=spec.input_size,
        mean=mean,
        std=std,
    )
    if torch_home is not None:
        torch.hub.set_dir(str(Path(torch_home) / "hub"))
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


def retarget(
    trained: Trained,
    data: InMemoryData,
    num_classes: int,
    *,
    seed: int,
    device: torch.device,
    read_only: bool = False,
) -> Trained:
    """`trained` re-pointed at `data` (its scale, channels and size), with a new head if
    the number of classes changes. The original network is left as it was.

    `read_only`: the caller only runs the network (a teacher); when nothing changes it
    gets `trained` itself instead of a copy (copying a resnet costs a noticeable fraction
    of a second, more than a small distill epoch)."""
    config = adapt_config(trained.config, data, trained.config.num_classes)
    if read_only and num_classes == config.num_classes and config == trained.config:
        trained.net.to(device)
        return trained
    net = build_network(config)
    load_weights(net, trained.net.state_dict(), what="the trained network")
    if num_classes != config.num_classes:
        torch.manual_seed(seed)
        replace_head(net.backbone, num_classes)
        config.num_classes = num_classes
    return Trained(net.to(device), config, trained.class_names, trained.task)


def same_classes(trained: Trained, data: InMemoryData) -> bool:
    """Whether `trained` predicts what `data` labels: its classes (or regression targets)."""
    return (
        data.y is not None and trained.task == data.task and trained.class_names == data.class_names
    )
