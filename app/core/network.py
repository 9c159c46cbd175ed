"""The `Network` every served model is: preprocessing (as buffers) around a backbone.

A Network takes raw inputs [N, C, H, W] on the training data's own scale (0-1 or 0-255),
divides by that scale, normalises, repeats a grey channel for an RGB backbone and resizes
to the size the backbone needs. So the weights file alone, plus the `NetworkConfig` in
model.json, rebuilds a model that serving and ONNX export run with nothing from training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.core.archs import ArchInfo, arch_info


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


@lru_cache(maxsize=64)
def module_names(arch: str) -> frozenset[str]:
    """Module names of a built Network of `arch` (`backbone.layer2`, ...): hint layers are
    checked against these at submission. They depend on the arch only."""
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
