"""The teacher's outputs, computed once: what makes a distillation step cheap.

A KD step with a live teacher runs the teacher's forward pass every step: with a resnet18
teacher and a small student that is ~19x the student's own step on a CPU. When the
distill set is seen without random augmentation the teacher's outputs never change, so
they are computed once (in batches, under inference_mode, on the training device) and
the objective indexes them by sample. With augmentation the cache stores a fixed number
of augmented views per sample (FKD: Shen & Xing, 2022), each with its own teacher
outputs, and every epoch replays one view per sample.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from app.core.datasets import InMemoryData
from app.core.datasets.streamed import StreamedImages
from worker.augment import crop_batch, crop_pad
from worker.control import JobControl
from worker.inference import Outputs, Transform, batches, collect

# Teacher batch size for the cache pass. A GPU wants large batches; on a CPU the
# activations of large ones fall out of cache (resnet18 at 64 px: 2.3 s for digits at
# batch 64, 3.2 s at 512), so it takes the size that measured fastest there.
CACHE_BATCH_SIZE = {"cuda": 1024, "cpu": 64}
# Cached hint features beyond this size fall back to live teacher passes (bytes).
MAX_FEATURE_CACHE_BYTES = 2 * 1024**3

# The teacher's logits (and hint features) for every sample (or view) of a dataset.
TeacherOutputs = Outputs


def compute_teacher_outputs(
    teacher: nn.Module,
    data: InMemoryData,
    *,
    device: torch.device,
    control: JobControl | None = None,
    feature_layer: str | None = None,
    views: ViewSchedule | None = None,
) -> TeacherOutputs:
    """The teacher's outputs for every sample, or with `views` for every sample in each
    of the schedule's views (view after view: row v * N + i is view v of sample i)."""

    def one_pass(transform: Transform | None = None) -> TeacherOutputs:
        return collect(
            batches(
                teacher,
                data,
                device=device,
                batch_size=CACHE_BATCH_SIZE.get(device.type, 64),
                control=control,
                feature_layer=feature_layer,
                transform=transform,
            )
        )

    if views is None:
        return one_pass()
    parts = [one_pass(lambda x, idx, v=v: views.apply(x, idx, view=v)) for v in range(views.views)]
    features = [p.features for p in parts if p.features is not None]
    return TeacherOutputs(
        logits=torch.cat([p.logits for p in parts]),
        features=torch.cat(features) if features else None,
    )


def cache_key(
    data: InMemoryData, views: ViewSchedule | None, layer: str | None, *, seed: int
) -> str:
    """What a saved cache must have been computed for: the samples (row i is sample i of
    the stage's data: the dataset, its filters and their order), the views and the
    hooked layer. The teacher is the job's own, fixed once its stage is done."""
    digest = hashlib.sha256(data.description.encode())
    if isinstance(data.x, StreamedImages):
        digest.update(data.x.rows.tobytes())
    if data.y is not None:
        digest.update(data.y.cpu().numpy().tobytes())
    samples = digest.hexdigest()[:16]
    view_part = "none" if views is None else f"{views.views}x{views.kind}+{views.pad}"
    return f"samples={samples};n={len(data)};views={view_part};seed={seed};layer={layer}"


def outputs_tensors(outputs: TeacherOutputs) -> dict[str, torch.Tensor]:
    """The cache as named tensors, for CheckpointStore.save_outputs."""
    tensors = {"logits": outputs.logits}
    if outputs.features is not None:
        tensors["features"] = outputs.features
    return tensors


def saved_outputs(
    tensors: dict[str, torch.Tensor] | None, device: torch.device
) -> TeacherOutputs | None:
    """A saved cache back on the training device."""
    if tensors is None:
        return None
    features = tensors.get("features")
    return TeacherOutputs(
        logits=tensors["logits"].to(device),
        features=None if features is None else features.to(device),
    )


def feature_cache_fits(
    teacher: nn.Module, data: InMemoryData, layer: str, device: torch.device, *, views: int = 1
) -> bool:
    """Whether caching `layer`'s output for all of `data` (in `views` views) stays under
    the size bound."""
    probe = collect(
        batches(teacher, data.head(1), device=device, batch_size=1, feature_layer=layer)
    )
    assert probe.features is not None
    return probe.features[0].numel() * 4 * len(data) * views <= MAX_FEATURE_CACHE_BYTES


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
