"""Distillation objectives, and the teacher-output cache that makes them cheap.

A KD step with a live teacher runs the teacher's forward pass every step: with a resnet18
teacher and a small student that is ~19x the student's own step on a CPU. When the
distill set is seen without random augmentation the teacher's outputs never change, so
`teacher_outputs` computes them once (in batches, under inference_mode, on the training
device) and the objective indexes them by sample. With augmentation the cache stores a
fixed number of augmented views per sample (FKD: Shen & Xing, 2022), each with its own
teacher outputs, and every epoch replays one view per sample; or a live pass each step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from app.schemas.job_spec import DistillLossSpec
from worker.augment import crop_batch, crop_pad
from worker.control import JobControl
from worker.data import InMemoryData
from worker.losses import HintAdapter, hint_mse, mse_logits, soft_target_kl, teacher_target

log = logging.getLogger(__name__)

# Teacher batch size for the cache pass. A GPU wants large batches; on a CPU the
# activations of large ones fall out of cache (resnet18 at 64 px: 2.3 s for digits at
# batch 64, 3.2 s at 512), so it takes the size that measured fastest there.
CACHE_BATCH_SIZE = {"cuda": 1024, "cpu": 64}
# Cached hint features beyond this size fall back to live teacher passes (bytes).
MAX_FEATURE_CACHE_BYTES = 2 * 1024**3


class FeatureHook:
    """Keeps the output of one module from the latest forward pass."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.value: torch.Tensor | None = None
        module = model.get_submodule(name)
        self.handle = module.register_forward_hook(self._store)

    def _store(self, _module: nn.Module, _inputs: object, output: object) -> None:
        self.value = output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the hooked layer did not run in the forward pass")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class TeacherOutputs:
    """The teacher's logits (and hint features) for every sample of a dataset."""

    logits: torch.Tensor  # [N, K] float32, on the training device
    features: torch.Tensor | None = None  # [N, ...] for hint, or None


@torch.inference_mode()
def compute_teacher_outputs(
    teacher: nn.Module,
    data: InMemoryData,
    *,
    device: torch.device,
    control: JobControl | None = None,
    feature_layer: str | None = None,
    batch_size: int | None = None,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TeacherOutputs:
    """One pass of the teacher over `data`; `transform(x, idx)` makes augmented views."""
    teacher.eval().to(device)
    batch_size = batch_size or CACHE_BATCH_SIZE.get(device.type, 64)
    hook = FeatureHook(teacher, feature_layer) if feature_layer else None
    logits, features = [], []
    try:
        for start in range(0, len(data), batch_size):
            if control is not None:
                control.check()
            idx = torch.arange(start, min(len(data), start + batch_size))
            x = data.x[idx].to(device, non_blocking=True).float()
            if transform is not None:
                x = transform(x, idx)
            logits.append(teacher(x).float())
            if hook is not None:
                features.append(hook.take().float())
    finally:
        if hook is not None:
            hook.remove()
    return TeacherOutputs(
        logits=torch.cat(logits), features=torch.cat(features) if features else None
    )


def feature_cache_fits(
    teacher: nn.Module, data: InMemoryData, layer: str, device: torch.device
) -> bool:
    """Whether caching `layer`'s output for all of `data` stays under the size bound."""
    probe = compute_teacher_outputs(
        teacher,
        InMemoryData(data.x[:1], None, data.class_names, data.scale),
        device=device,
        feature_layer=layer,
    )
    assert probe.features is not None
    return probe.features[0].numel() * 4 * len(data) <= MAX_FEATURE_CACHE_BYTES


class DistillObjective:
    """The distill stage's loss: `loss.type` between student and teacher, plus hard labels.

    With `alpha` < 1 and labels whose classes are the teacher's, the hard-label
    cross-entropy gets weight 1 - alpha; without usable labels the loss is pure
    distillation (alpha taken as 1).
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
        t_logits, t_feats = self.teacher_outputs(x, idx)
        s_logits = model(x)
        spec = self.spec
        if spec.type == "mse":
            kd = mse_logits(s_logits, t_logits)
        else:
            kd = soft_target_kl(s_logits, t_logits, spec.temperature)
        alpha = spec.alpha if (self.use_labels and y is not None) else 1.0
        loss = alpha * kd
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * F.cross_entropy(s_logits, y)
        if spec.type == "hint":
            assert (
                self.adapter is not None and self.student_hook is not None and t_feats is not None
            )
            adapted = self.adapter(self.student_hook.take())
            loss = loss + spec.hint_weight * hint_mse(
                adapted, teacher_target(self.adapter, t_feats)
            )
        return loss, s_logits


class ViewSchedule:
    """FKD-style cached augmentation: V fixed augmented views per sample.

    Views are defined by stored parameters (flip bit, crop offsets), so the same view can
    be rebuilt from the raw sample every epoch without storing augmented images; the
    teacher's outputs for each view are computed once. Epoch e uses view e mod V.
    """

    def __init__(self, *, n: int, views: int, kind: str, image_size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.n, self.views, self.kind = n, views, kind
        self.pad = crop_pad(image_size)
        self.flip = torch.rand(views, n, generator=gen) < 0.5
        self.offsets = torch.randint(0, 2 * self.pad + 1, (views, n, 2), generator=gen)
        self.current = 0

    def set_epoch(self, epoch: int) -> None:
        self.current = epoch % self.views

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows of the cache for samples `idx` in the current view."""
        return self.current * self.n + idx

    def apply(self, x: torch.Tensor, idx: torch.Tensor, view: int | None = None) -> torch.Tensor:
        v = self.current if view is None else view
        idx_cpu = idx.cpu()
        if self.kind in ("flip", "flip_crop"):
            flip = self.flip[v, idx_cpu].to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.kind in ("crop", "flip_crop"):
            x = crop_batch(x, self.offsets[v, idx_cpu].to(x.device), self.pad)
        return x
