"""The architecture registry, and the `Network` wrapper every served model is.

`@register("name")` adds an architecture; every torchvision classification model is
registered by its torchvision name. A `Network` is preprocessing (scale, normalisation,
channel and size adaptation, all as buffers) followed by a backbone, so that the weights
file alone, plus `model.json`, rebuilds a model that takes inputs on the training data's
own scale: serving and ONNX export need nothing from training code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

log = logging.getLogger(__name__)


class UnknownNameError(ValueError):
    """An unknown registry name; the message lists the known ones."""


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str
    # Smallest input (pixels a side) the backbone handles; smaller inputs are resized up.
    min_size: int
    # Some models (ViT, MaxViT) take one size only.
    fixed_size: int | None
    # Channels the backbone's first layer takes; 1-channel inputs are repeated to fit.
    channels: int | None
    # Module names (inside the backbone) used for hint distillation when none is given.
    default_hint_layer: str | None
    build: Callable[..., nn.Module]


_ARCHS: dict[str, ArchInfo] = {}


def register(
    name: str,
    *,
    family: str,
    min_size: int = 8,
    fixed_size: int | None = None,
    channels: int | None = None,
    default_hint_layer: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an architecture builder `build(num_classes, in_channels, width) -> nn.Module`."""

    def deco(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHS[name] = ArchInfo(
            name, family, min_size, fixed_size, channels, default_hint_layer, build
        )
        return build

    return deco


def known_archs() -> list[str]:
    return sorted(_ARCHS)


def arch_info(name: str) -> ArchInfo:
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown arch {name!r}; known: {', '.join(known_archs())}"
        ) from None


# ------------------------------------------------------------------------- small_cnn
class SmallCNN(nn.Module):
    """The founding document's student: three conv stages, scaled by `width`.

    Two 3x3 conv + batch-norm + ReLU layers a stage, 2x2 max-pool after the first two
    stages, global average pooling, one linear head. At width 1 the channels are
    16/32/64 (about 73k parameters for 10 classes); inputs from 8x8 upwards.
    """

    BASE_CHANNELS = (16, 32, 64)

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        chans = [max(4, round(c * width)) for c in self.BASE_CHANNELS]
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("small_cnn", family="small_cnn", min_size=8, default_hint_layer="stage2")
def _small_cnn(num_classes: int, in_channels: int, width: float) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width)


# ----------------------------------------------------------------------- torchvision
def _torchvision_family(name: str) -> str:
    for prefix in (
        "resnext",
        "wide_resnet",
        "resnet",
        "mobilenet_v2",
        "mobilenet_v3",
        "efficientnet",
        "mnasnet",
        "regnet",
        "shufflenet",
        "squeezenet",
        "densenet",
        "convnext",
        "vgg",
        "alexnet",
        "googlenet",
        "inception",
        "maxvit",
        "swin",
        "vit",
    ):
        if name.startswith(prefix):
            return "resnet" if prefix in ("resnext", "wide_resnet") else prefix
    return name


# Where a hint is taken from, by family: a middle stage with a spatial feature map.
_HINT_LAYERS = {
    "resnet": "layer2",
    "mobilenet_v2": "features.7",
    "mobilenet_v3": "features.6",
    "efficientnet": "features.4",
    "mnasnet": "layers.10",
    "regnet": "trunk_output.block2",
    "shufflenet": "stage3",
    "squeezenet": "features.6",
    "densenet": "features.denseblock2",
    "convnext": "features.3",
    "vgg": "features.14",
    "alexnet": "features.5",
    "googlenet": "inception4a",
    "inception": "Mixed_6a",
}
# Inputs smaller than this fail inside the network (pooling or window sizes).
_MIN_SIZES = {"alexnet": 64, "inception": 80, "googlenet": 32}
_FIXED_SIZES = {"vit": 224, "maxvit": 224}


def _register_torchvision() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        family = _torchvision_family(name)
        register(
            name,
            family=family,
            # Conv nets are resized to at least 32x32: below that their stride-32 stems
            # reduce an 8x8 digit to a single pixel before the second stage.
            min_size=_MIN_SIZES.get(family, 32),
            fixed_size=_FIXED_SIZES.get(family),
            channels=3,
            default_hint_layer=_HINT_LAYERS.get(family),
        )(_torchvision_builder(name))


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, width: float, weights: str | None = None):
        kwargs: dict[str, Any] = {}
        if name in ("googlenet", "inception_v3"):
            # Auxiliary heads only matter for their original training recipe; they make
            # forward() return tuples in training mode.
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True
        if weights is None:
            return torchvision.models.get_model(
                name, weights=None, num_classes=num_classes, **kwargs
            )
        # Pretrained weights come with their own head; load, then replace the head.
        if name in ("googlenet", "inception_v3"):
            kwargs = {}
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
        if name in ("googlenet", "inception_v3"):
            model.aux_logits = False
            model.AuxLogits = None if name == "inception_v3" else model.AuxLogits
            if name == "googlenet":
                model.aux1 = None
                model.aux2 = None
        replace_head(model, num_classes)
        return model

    return build


_register_torchvision()


# --------------------------------------------------------------------------- heads
def head_name(model: nn.Module) -> str:
    """The name of the classifier layer: the last Linear, or SqueezeNet's final 1x1 conv."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is not None:
        return last
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name.endswith("classifier.1"):
            return name
    raise ValueError(f"no classifier head found in {type(model).__name__}")


def head_out_features(model: nn.Module) -> int:
    module = model.get_submodule(head_name(model))
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give the model a fresh classifier for `num_classes` (no-op if it already fits)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        if old.out_features == num_classes:
            return
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        if old.out_channels == num_classes:
            return
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ------------------------------------------------------------------------ Network
class Network(nn.Module):
    """Preprocessing + backbone: takes raw inputs [N, C, H, W] on the data's own scale."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        in_channels: int,
        backbone_channels: int,
        backbone_size: int | None,
        scale: float,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.in_channels = in_channels
        self.backbone_channels = backbone_channels
        self.backbone_size = backbone_size
        # Buffers, so that they travel in the weights file and to the device with the model.
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / self.scale - self.mean) / self.std
        if self.backbone_channels != self.in_channels:
            # Grey images for an RGB backbone: repeat the channel (keeps pretrained weights).
            x = x.expand(-1, self.backbone_channels, -1, -1)
        if self.backbone_size is not None and x.shape[-1] != self.backbone_size:
            size = (self.backbone_size, self.backbone_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(x))


def backbone_size_for(info: ArchInfo, image_size: int, input_size: int | None) -> int | None:
    """The size the backbone sees: None means the data's own size, no resize."""
    if info.fixed_size is not None:
        return info.fixed_size
    target = input_size if input_size is not None else max(image_size, info.min_size)
    target = max(target, info.min_size)
    return None if target == image_size else target


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a Network; stored in model.json as `network`."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    width: float = 1.0
    input_size: int | None = None
    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def build_network(config: NetworkConfig, *, weights: str | None = None) -> Network:
    """Build a Network; `weights` names pretrained torchvision weights (source torchvision)."""
    info = arch_info(config.arch)
    backbone_channels = info.channels or config.in_channels
    kwargs: dict[str, Any] = {}
    if weights is not None:
        kwargs["weights"] = weights
    backbone = info.build(config.num_classes, backbone_channels, config.width, **kwargs)
    mean = config.mean or [0.0] * config.in_channels
    std = config.std or [1.0] * config.in_channels
    return Network(
        backbone,
        in_channels=config.in_channels,
        backbone_channels=backbone_channels,
        backbone_size=backbone_size_for(info, config.image_size, config.input_size),
        scale=config.scale,
        mean=mean,
        std=std,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_hint_layer(arch: str) -> str | None:
    layer = arch_info(arch).default_hint_layer
    return None if layer is None else f"backbone.{layer}"


def module_names(config: NetworkConfig) -> set[str]:
    """Module names of a network (they depend on the arch only)."""
    return set(_module_names(config.arch))


@lru_cache(maxsize=64)
def _module_names(arch: str) -> frozenset[str]:
    config = NetworkConfig(arch=arch, num_classes=10, in_channels=3, image_size=32)
    try:
        # The meta device allocates nothing, so even a 600M-parameter model builds at once.
        with torch.device("meta"):
            net = build_network(config)
    except NotImplementedError:
        # A few builders (RegNet) compute their widths with tensor maths the meta device
        # cannot run; build those for real.
        net = build_network(config)
    return frozenset(name for name, _ in net.named_modules())


def weights_enum_names(arch: str) -> list[str]:
    """Names of the pretrained weights torchvision knows for `arch` (empty for ours)."""
    if arch_info(arch).family == "small_cnn":
        return []
    return [w.name for w in torchvision.models.get_model_weights(arch)]


def size_bytes_fp32(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


__all__ = [
    "ArchInfo",
    "Network",
    "NetworkConfig",
    "SmallCNN",
    "UnknownNameError",
    "arch_info",
    "backbone_size_for",
    "build_network",
    "count_params",
    "default_hint_layer",
    "head_name",
    "head_out_features",
    "known_archs",
    "module_names",
    "register",
    "replace_head",
    "weights_enum_names",
]
