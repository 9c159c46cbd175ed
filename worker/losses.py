"""The distillation losses, in a registry: `mse`, `kl` and `hint`.

Each takes student and teacher logits (and, for `hint`, a feature pair) and returns a
scalar. They are plain functions of tensors so that tests can check them against values
computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.nets import UnknownNameError

LossFn = Callable[..., torch.Tensor]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        _LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    try:
        return _LOSSES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown loss {name!r}; known: {', '.join(sorted(_LOSSES))}"
        ) from None


def known_losses() -> list[str]:
    return sorted(_LOSSES)


@register_loss("mse")
def mse_logits(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The founding formula E_x ||f(x) - g(x)||^2: squared norm over logits, mean over x."""
    return (student.float() - teacher.float()).pow(2).sum(dim=1).mean()


@register_loss("kl")
def soft_target_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. (2015): KL(softmax(t/T) || softmax(s/T)) * T^2, mean over the batch.

    The T^2 factor keeps the gradient scale independent of T, so that `alpha` mixes it
    with the hard-label loss at a stable ratio.
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


@register_loss("hint")
def hint_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al., 2015): mean squared error between the adapted student
    feature map and the teacher's, per element."""
    return F.mse_loss(student_feature.float(), teacher_feature.float())


class HintAdapter(nn.Module):
    """The learned regressor of FitNets: a 1x1 conv from the student's channels to the
    teacher's, then a resize to the teacher's spatial size (feature maps differ in both).
    Token features ([N, L, D], transformers) are pooled over L and mapped by a linear layer.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        self.spatial = len(student_shape) == 4 and len(teacher_shape) == 4
        self.teacher_hw = tuple(teacher_shape[-2:]) if self.spatial else None
        if self.spatial:
            self.proj: nn.Module = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
        else:
            self.proj = nn.Linear(_flat_dim(student_shape), _flat_dim(teacher_shape))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            out = self.proj(feature)
            if tuple(out.shape[-2:]) != self.teacher_hw:
                out = F.interpolate(out, size=self.teacher_hw, mode="bilinear", align_corners=False)
            return out
        return self.proj(pool_feature(feature))


def pool_feature(feature: torch.Tensor) -> torch.Tensor:
    """A non-spatial feature as [N, D]: token maps are averaged over tokens."""
    if feature.ndim == 3:
        return feature.mean(dim=1)
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3))
    return feature.flatten(1)


def _flat_dim(shape: torch.Size) -> int:
    return int(shape[-1]) if len(shape) == 3 else int(shape[1])


def teacher_target(adapter: HintAdapter, teacher_feature: torch.Tensor) -> torch.Tensor:
    """The teacher feature in the adapter's output form."""
    return teacher_feature if adapter.spatial else pool_feature(teacher_feature)
