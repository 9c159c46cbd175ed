"""The architecture registry: every network a job can name, with the facts about it.

`@register("name", family=...)` adds a builder `build(num_classes, in_channels, width)`;
every torchvision classification model is registered by its torchvision name, beside
`small_cnn` (the founding document's student). `ARCHS.get(name)` gives an `ArchInfo`, or
an `UnknownNameError` that suggests close names. Building a whole served network (the
preprocessing around a backbone) is `app.core.network`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from app.core.registry import Registry

log = logging.getLogger(__name__)


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


ARCHS: Registry[ArchInfo] = Registry(
    "arch",
    featured=("small_cnn", "resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"),
    everything="small_cnn and every torchvision classification model",
)


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
        ARCHS.add(
            name, ArchInfo(name, family, min_size, fixed_size, channels, default_hint_layer, build)
        )
        return build

    return deco


def arch_info(name: str) -> ArchInfo:
    """The registered architecture `name`; UnknownNameError (with suggestions) if none."""
    return ARCHS.get(name)


def known_archs() -> list[str]:
    return ARCHS.names()


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


def default_hint_layer(arch: str) -> str | None:
    """The module of a built Network (`backbone.` prefixed) whose output a hint uses."""
    layer = arch_info(arch).default_hint_layer
    return None if layer is None else f"backbone.{layer}"


def weights_enum_names(arch: str) -> list[str]:
    """Names of the pretrained weights torchvision knows for `arch` (empty for ours)."""
    if arch_info(arch).family == "small_cnn":
        return []
    return [w.name for w in torchvision.models.get_model_weights(arch)]


def torchvision_weights(arch: str, weights: str) -> Any:
    """torchvision's weights enum member (its transforms, categories and file URL)."""
    return torchvision.models.get_model_weights(arch)[weights]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHS",
    "ArchInfo",
    "SmallCNN",
    "arch_info",
    "count_params",
    "default_hint_layer",
    "head_name",
    "head_out_features",
    "known_archs",
    "register",
    "replace_head",
    "torchvision_weights",
    "weights_enum_names",
]
