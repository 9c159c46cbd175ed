"""The distillation losses, in a registry: `mse`, `kl`, `hint`, `dkd` and `dist`.

A `DistillLoss` is what a job's `distill.loss.type` names: a term between student and
teacher logits (some also read the hard labels), and whether it also matches features
(through a learned adapter). The API checks names against `LOSSES` at submission; the
worker's distillation objective dispatches through it. The terms are plain functions of
tensors, so that tests check them against values computed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


def decoupled_kd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """DKD (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation"):
    (alpha * TCKD + beta * NCKD) * T^2, each KL a mean over the batch.

    With p = softmax(logits / T) and t the target class of a sample:
    - TCKD = KL([p_t, 1 - p_t] of the teacher || [p_t, 1 - p_t] of the student), the
      target class against all the others;
    - NCKD = KL(teacher || student) between the softmax(logits / T) over the non-target
      classes only (the target column dropped; the paper's code subtracts 1000 from the
      target logit, the same thing in the limit).

    The target class: the paper uses the ground-truth label. Distillation sets here are
    often unlabelled, so `labels` (integer classes of the teacher's head) are used when
    given, and otherwise the teacher's top class (argmax of its logits) stands in for
    them. The paper's defaults: alpha 1, beta 8, T 4. Needs at least two classes.
    """
    n, classes = student.shape
    if classes < 2:
        raise ValueError("dkd needs at least two classes")
    if labels is not None and labels.is_floating_point():
        raise ValueError("dkd needs class labels, not float targets")
    t = temperature
    target = teacher.argmax(dim=1) if labels is None else labels
    target = target.to(device=student.device, dtype=torch.long).reshape(n)
    is_target = F.one_hot(target, classes).bool()

    def parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log [p_t, 1 - p_t] ([N, 2]) and the log-softmax over the non-target classes
        ([N, C - 1]), both from logits / T, in log space (no log of a difference)."""
        z = logits.float() / t
        log_all = torch.logsumexp(z, dim=1)
        z_target = z.gather(1, target[:, None]).squeeze(1)
        z_other = z[~is_target].reshape(n, classes - 1)
        log_other = torch.logsumexp(z_other, dim=1)
        binary = torch.stack([z_target - log_all, log_other - log_all], dim=1)
        return binary, z_other - log_other[:, None]

    s_binary, s_other = parts(student)
    t_binary, t_other = parts(teacher)
    tckd = F.kl_div(s_binary, t_binary, reduction="batchmean", log_target=True)
    nckd = F.kl_div(s_other, t_other, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * (t * t)


PEARSON_EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """The Pearson correlation of each row of `a` with the same row of `b` ([N]): the
    cosine of the centred rows, cov / (|a - mean a| |b - mean b| + eps). The eps (as in
    DIST's code) makes a row without variance correlate 0 instead of dividing by zero."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relation(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger
    Teacher"): (beta * inter + gamma * intra) * T^2 on P = softmax(logits / T), where
    - inter = 1 - mean over samples of pearson(P_student[i, :], P_teacher[i, :]) (the
      ranking of classes within each sample);
    - intra = 1 - mean over classes of pearson(P_student[:, c], P_teacher[:, c]) (each
      class's probabilities across the batch).

    A correlation, unlike a KL, asks the student to match the teacher's relations, not
    its exact probabilities. T is the spec's `temperature` (the paper used 1 on ImageNet,
    4 on CIFAR-100); the paper's defaults are beta 1, gamma 1. A class or sample whose
    probabilities do not vary (e.g. a batch of one, for intra) correlates 0 (see
    `pearson_rows`).
    """
    t = temperature
    p_student = F.softmax(student.float() / t, dim=1)
    p_teacher = F.softmax(teacher.float() / t, dim=1)
    inter = 1 - pearson_rows(p_student, p_teacher).mean()
    intra = 1 - pearson_rows(p_student.T, p_teacher.T).mean()
    return (beta * inter + gamma * intra) * (t * t)


class LogitTerm(Protocol):
    """A loss's logit term: `term(student, teacher, spec, labels=None)`. `labels` are the
    hard labels of the batch where they are the teacher's classes, else None; most terms
    ignore them."""

    def __call__(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        spec: Any,
        /,
        *,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class DistillLoss:
    """One `distill.loss.type`: `logits(student, teacher, spec, labels=None)` is its logit
    term (spec is the job's DistillLossSpec: temperature, ...; labels the batch's hard
    labels where they are the teacher's classes, else None); with `features`, the
    objective adds `spec.hint_weight` times `hint_mse` between the adapted student and
    teacher features."""

    name: str
    logits: LogitTerm
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
        lambda s, t, _spec, *, labels=None: squared_error(s, t),
        for_regression=True,
        description="E||f(x) - g(x)||^2 between teacher and student logits",
    )
)
_add(
    DistillLoss(
        "kl",
        lambda s, t, spec, *, labels=None: soft_target_kl(s, t, spec.temperature),
        description="Hinton soft targets at `temperature`",
    )
)
_add(
    DistillLoss(
        "hint",
        lambda s, t, spec, *, labels=None: soft_target_kl(s, t, spec.temperature),
        features=True,
        description="FitNets feature regression through a learned adapter, plus the kl term",
    )
)
_add(
    DistillLoss(
        "dkd",
        lambda s, t, spec, *, labels=None: decoupled_kd(
            s, t, spec.temperature, alpha=spec.dkd_alpha, beta=spec.dkd_beta, labels=labels
        ),
        description="Decoupled KD: dkd_alpha * TCKD + dkd_beta * NCKD at `temperature`; "
        "target class = the label, else the teacher's top class",
    )
)
_add(
    DistillLoss(
        "dist",
        lambda s, t, spec, *, labels=None: dist_relation(
            s, t, spec.temperature, beta=spec.dist_beta, gamma=spec.dist_gamma
        ),
        description="DIST: Pearson-correlation relations of the softmax at `temperature`, "
        "dist_beta * inter-class + dist_gamma * intra-class",
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
