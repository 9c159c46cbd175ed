"""What each stage optimises: an `Objective` (declared by the fit loop, worker/train.py)
maps (model, inputs, labels, sample indices) to (loss, logits); the loop calls it every
step.

- `supervised`: cross-entropy on class labels, the squared error on regression targets
  (teacher training, `train` jobs, baselines);
- `DistillObjective`: the registered distillation loss (app/core/losses.py) between
  student and teacher, plus hard labels where they are the teacher's classes;
- `FinetuneObjective`: the target loss L_T, plus an optional soft-target term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.core.losses import (
    DistillLoss,
    HintAdapter,
    get_loss,
    hint_mse,
    soft_target_kl,
    squared_error,
)
from app.schemas.stage_spec import DistillLossSpec, FinetuneStage
from worker.context import JobFailedError
from worker.inference import FeatureHook
from worker.teacher_outputs import TeacherOutputs, ViewSchedule


class Supervised:
    """Supervised training: cross-entropy on class labels, the squared error on float
    regression targets (decided by the labels' dtype). A class, not a closure, so that
    data-parallel ranks can be handed it (worker/parallel.py); so are the others here."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if y is None:
            raise JobFailedError(
                "unlabelled_data", "this stage needs labels, and its dataset has none"
            )
        logits = model(x)
        if y.is_floating_point():
            return squared_error(logits, y), logits
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


# The name the stages and tests call it by.
supervised = Supervised


class DistillObjective:
    """The distill stage's loss: `loss.type` between student and teacher, plus hard labels.

    With `alpha` < 1 and labels whose classes are the teacher's, the hard-label
    cross-entropy gets weight 1 - alpha; without usable labels the loss is pure
    distillation (alpha taken as 1). A loss with features (hint) adds `hint_weight` times
    the feature term through the learned adapter.
    """

    def __init__(
        self,
        *,
        teacher: nn.Module,
        loss: DistillLossSpec,
        use_labels: bool,
        cache: TeacherOutputs | None,
        adapter: HintAdapter | None = None,
        student_hook: FeatureHook | None = None,
        teacher_hook: FeatureHook | None = None,
        views: ViewSchedule | None = None,
        mixup: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.spec = loss
        self.use_labels = use_labels
        self.cache = cache
        self.adapter = adapter
        self.student_hook = student_hook
        self.teacher_hook = teacher_hook
        self.views = views
        self.mixup = mixup
        self.seed = seed

    @property
    def loss(self) -> DistillLoss:
        # Looked up by name (the registry's entries hold functions that need not pickle).
        return get_loss(self.spec.type)

    @property
    def hooks(self) -> list[FeatureHook]:
        return [h for h in (self.student_hook, self.teacher_hook) if h is not None]

    def to(self, device: torch.device) -> None:
        """Move the teacher and the cache to `device` (a data-parallel rank's own)."""
        self.teacher.to(device)
        if self.cache is not None:
            self.cache = TeacherOutputs(
                self.cache.logits.to(device),
                None if self.cache.features is None else self.cache.features.to(device),
            )
        if self.adapter is not None:
            self.adapter.to(device)

    def mix(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mixup within the batch: (mixed x, each row's partner, the weight of its own
        image). Drawn from the seed and the batch's sample indices, so a resumed stage
        (which replays the same batches) mixes the same pairs without saving any state."""
        rng = np.random.default_rng([self.seed, *idx.tolist()[:64], len(idx)])
        lam = float(rng.beta(self.mixup, self.mixup))
        partner = torch.from_numpy(rng.permutation(len(idx))).to(x.device)
        return lam * x + (1.0 - lam) * x[partner], partner, lam

    def teacher_outputs(
        self, x: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is not None:
            rows = idx.to(self.cache.logits.device)
            if self.views is not None:
                rows = self.views.rows(rows)
            feats = None if self.cache.features is None else self.cache.features[rows]
            return self.cache.logits[rows], feats
        with torch.no_grad():
            logits = self.teacher(x)
        feats = self.teacher_hook.take() if self.teacher_hook is not None else None
        return logits, feats

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.views is not None:
            x = self.views.apply(x, idx)
        partner, lam = None, 1.0
        if self.mixup > 0:
            # Teacher and student see the same mixed image (function matching).
            x, partner, lam = self.mix(x, idx)
        t_logits, t_feats = self.teacher_outputs(x, idx)
        s_logits = model(x)
        spec = self.spec
        # The hard labels, where they are the teacher's classes (dkd's target class); a
        # mixed image has two, so dkd takes the teacher's argmax there.
        labels = y if (self.use_labels and y is not None) else None
        kd = self.loss.logits(s_logits, t_logits, spec, labels=labels if partner is None else None)
        alpha = spec.alpha if labels is not None else 1.0
        loss = alpha * kd
        if alpha < 1.0:
            assert labels is not None
            hard = F.cross_entropy(s_logits, labels)
            if partner is not None:
                hard = lam * hard + (1.0 - lam) * F.cross_entropy(s_logits, labels[partner])
            loss = loss + (1.0 - alpha) * hard
        if self.loss.features:
            assert (
                self.adapter is not None and self.student_hook is not None and t_feats is not None
            )
            adapted = self.adapter(self.student_hook.take())
            loss = loss + spec.hint_weight * hint_mse(adapted, self.adapter.target(t_feats))
        return loss, s_logits


class FinetuneObjective:
    """L_T on the target labels (cross-entropy, or the squared error to one-hot targets;
    the squared error for regression targets), plus `kd_weight` times the soft-target
    term from a teacher that predicts the same classes."""

    def __init__(
        self, stage: FinetuneStage, teacher: nn.Module | None, cache: torch.Tensor | None
    ) -> None:
        self.stage = stage
        self.teacher = teacher.eval() if teacher is not None else None
        self.cache = cache

    def to(self, device: torch.device) -> None:
        if self.teacher is not None:
            self.teacher.to(device)
        if self.cache is not None:
            self.cache = self.cache.to(device)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
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
