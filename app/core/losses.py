"""The distillation losses, in a registry: `mse`, `kl` and `hint`.

A `DistillLoss` is what a job's `distill.loss.type` names: a term between student and
teacher logits, and whether it also matches features (through a learned adapter). The
API checks names against `LOSSES` at submission; the worker's distillation objective
dispatches through it. The terms are plain functions of tensors, so that tests check them
against values computed by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.core.registry import Registry


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The founding formula E_x ||f(x) - g(x)||^2: the squared norm over outputs (summed
    over classes or targets), mean over samples. Teacher-to-student on logits (`mse`), and
    the target loss L_T = E ||g(x) - y||^2 on regression targets or one-hot classes."""
    return (outputs.float() - targets.float()).pow(2).sum(dim=1).mean()


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


def hint_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al., 2015): mean squared error between the adapted student
    feature map and the teacher's, per element."""
    return F.mse_loss(student_feature.float(), teacher_feature.float())


@dataclass(frozen=True)
class DistillLoss:
    """One `distill.loss.type`: `logits(student, teacher, spec)` is its logit term (spec
    is the job's DistillLossSpec: temperature, ...); with `features`, the objective adds
    `spec.hint_weight` times `hint_mse` between the adapted student and teacher features."""

    name: str
    logits: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    features: bool = False
    # Whether it applies to regression outputs (a teacher that predicts float targets),
    # which have no class distribution to soften.
    for_regression: bool = False
    description: str = ""


LOSSES: Registry[DistillLoss] = Registry("loss")


def _add(loss: DistillLoss) -> None:
    LOSSES.add(loss.name, loss)


_add(
    DistillLoss(
        "mse",
        lambda s, t, _spec: squared_error(s, t),
        for_regression=True,
        description="E||f(x) - g(x)||^2 between teacher and student logits",
    )
)
_add(
    DistillLoss(
        "kl",
        lambda s, t, spec: soft_target_kl(s, t, spec.temperature),
        description="Hinton soft targets at `temperature`",
    )
)
_add(
    DistillLoss(
        "hint",
        lambda s, t, spec: soft_target_kl(s, t, spec.temperature),
        features=True,
        description="FitNets feature regression through a learned adapter, plus the kl term",
    )
)


def get_loss(name: str) -> DistillLoss:
    return LOSSES.get(name)


def known_losses() -> list[str]:
    return LOSSES.names()


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

    def target(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        """The teacher feature in this adapter's output form."""
        return teacher_feature if self.spatial else pool_feature(teacher_feature)


def pool_feature(feature: torch.Tensor) -> torch.Tensor:
    """A non-spatial feature as [N, D]: token maps are averaged over tokens."""
    if feature.ndim == 3:
        return feature.mean(dim=1)
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3))
    return feature.flatten(1)


def _flat_dim(shape: torch.Size) -> int:
    return int(shape[-1]) if len(shape) == 3 else int(shape[1])
