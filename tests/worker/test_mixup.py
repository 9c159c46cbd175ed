"""Mixup in the distill stage: teacher and student see the same mixed image, the pairs are
reproducible from the seed and the batch, and a cached teacher is refused."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from app.schemas.stage_spec import DatasetRef, DistillLossSpec, DistillStage
from worker.distill import choose_teacher_outputs
from worker.objectives import DistillObjective


class Recorder(nn.Module):
    """A linear network that keeps the last input it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.linear(x)


def objective(mixup: float, *, alpha: float = 1.0, seed: int = 0) -> DistillObjective:
    torch.manual_seed(1)
    return DistillObjective(
        teacher=Recorder(),
        loss=DistillLossSpec(type="kl", alpha=alpha),
        use_labels=True,
        cache=None,
        mixup=mixup,
        seed=seed,
    )


def test_teacher_and_student_see_the_same_mixed_images():
    obj = objective(1.0)
    student = Recorder()
    x = torch.randn(8, 4)
    idx = torch.arange(10, 18)
    loss, _ = obj(student, x, torch.randint(0, 3, (8,)), idx)
    assert torch.isfinite(loss)
    assert obj.teacher.seen is not None and student.seen is not None
    assert torch.equal(obj.teacher.seen, student.seen)
    assert not torch.allclose(student.seen, x), "the images were mixed"
    # Each mixed row is lam * its own image + (1 - lam) * its partner's.
    mixed, partner, lam = obj.mix(x, idx)
    assert torch.allclose(mixed, student.seen)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])
    assert 0.0 <= lam <= 1.0 and sorted(partner.tolist()) == list(range(8))


def test_pairs_repeat_for_the_same_seed_and_batch():
    x, idx = torch.randn(8, 4), torch.arange(8)
    first = objective(1.0).mix(x, idx)
    again = objective(1.0).mix(x, idx)
    other_seed = objective(1.0, seed=5).mix(x, idx)
    assert torch.equal(first[0], again[0]) and first[2] == again[2]
    assert first[2] != other_seed[2]


def test_hard_labels_are_mixed_like_the_images():
    obj = objective(1.0, alpha=0.0)  # the hard-label term alone
    student = Recorder()
    x, idx = torch.randn(8, 4), torch.arange(8)
    y = torch.randint(0, 3, (8,))
    loss, logits = obj(student, x, y, idx)
    _, partner, lam = obj.mix(x, idx)
    ce = nn.functional.cross_entropy
    expected = lam * ce(logits, y) + (1 - lam) * ce(logits, y[partner])
    assert torch.allclose(loss, expected)


def test_mixup_takes_a_live_teacher():
    stage = DistillStage(dataset=DatasetRef(name="digits"), mixup=1.0, augment="crop", epochs=50)
    assert choose_teacher_outputs(stage) == "live"
    for cached in ("cache", "views"):
        with pytest.raises(ValidationError, match="mixup needs teacher_outputs"):
            DistillStage(
                dataset=DatasetRef(name="digits"),
                mixup=1.0,
                teacher_outputs=cached,
                augment="crop" if cached == "views" else "none",
            )
