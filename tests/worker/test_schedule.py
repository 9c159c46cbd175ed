"""The schedule rules (worker/schedule.py, the stage spec's defaults): a stage given only
epochs trains properly on 50 images as on 60,000."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.core.datasets import InMemoryData
from app.core.network import NetworkConfig, build_network
from app.schemas.job_spec import parse_spec
from app.schemas.stage_spec import (
    FINETUNE_LR_SHARE,
    MIN_STEPS,
    OPTIMIZER_DEFAULTS,
    DatasetRef,
    DistillStage,
    OptimizerSpec,
    StageSpec,
)
from worker.control import JobControl
from worker.data import load_dataset
from worker.objectives import supervised
from worker.schedule import (
    auto_augment,
    auto_batch_size,
    describe,
    resolve_optimizer,
    resolve_stage,
    total_steps,
)
from worker.train import Progress, fit

SHOTS = load_dataset(
    DatasetRef(name="digits", classes=[5, 6, 7, 8, 9], samples_per_class=10),
    data_root=Path("."),
    seed=0,
)


def stage(**kw) -> StageSpec:
    return StageSpec(dataset=DatasetRef(name="digits"), **kw)


def data(n: int, channels: int = 1, regression: bool = False) -> InMemoryData:
    x = torch.zeros(n, channels, 8, 8)
    y = torch.zeros(n, 2) if regression else torch.zeros(n, dtype=torch.int64)
    names = ["t0", "t1"] if regression else ["a", "b"]
    return InMemoryData(x, y, names, 1.0)


@pytest.mark.parametrize(
    ("n", "batch"), [(1, 1), (3, 1), (10, 2), (50, 12), (256, 64), (60_000, 64)]
)
def test_the_default_batch_is_64_but_at_most_a_quarter_of_the_set(n: int, batch: int):
    assert auto_batch_size(n) == batch


def test_epochs_on_a_tiny_set_are_raised_to_the_minimum_steps():
    # 50 images, 10 epochs: batches of 12, 5 steps an epoch, 60 epochs for 300 steps.
    resolved = resolve_stage(stage(epochs=10), SHOTS)
    assert (resolved.batch_size, resolved.epochs) == (12, MIN_STEPS // 5)
    assert total_steps(resolved, len(SHOTS)) == MIN_STEPS
    # The default warm-up: 5% of the stage's steps (15 of 300), as epochs of 5 steps.
    assert resolved.scheduler.warmup_epochs == pytest.approx(15 / 5)
    explicit = resolve_stage(stage(epochs=10, scheduler={"warmup_epochs": 0}), SHOTS)
    assert explicit.scheduler.warmup_epochs == 0
    # Enough epochs already: unchanged. min_steps 0: exactly the epochs given.
    assert resolve_stage(stage(epochs=100), SHOTS).epochs == 100
    assert resolve_stage(stage(epochs=10, min_steps=0), SHOTS).epochs == 10
    # A batch the spec gives is kept, even above a quarter of the set.
    assert resolve_stage(stage(epochs=1, batch_size=64, min_steps=0), SHOTS).batch_size == 64
    # Resolving twice changes nothing.
    assert resolve_stage(resolved, SHOTS) == resolved


def test_a_stage_in_steps_takes_exactly_that_many():
    seen: list[Progress] = []

    class Sink:
        def progress(self, progress: Progress) -> None:
            seen.append(progress)

        def metric(self, **_: object) -> None:
            return None

    torch.manual_seed(0)
    net = build_network(NetworkConfig("small_cnn", 5, 1, 8, width=0.25))
    result = fit(
        stage_name="s",
        model=net,
        train=SHOTS,
        stage=stage(steps=13),
        objective=supervised(),
        device=torch.device("cpu"),
        seed=0,
        control=JobControl(),
        sink=Sink(),
    )
    # 5 steps an epoch: two whole epochs and 3 steps of the third.
    assert [p.step for p in seen] == list(range(1, 14))
    assert {p.steps for p in seen} == {13} and result.epochs_run == 3
    assert seen[-1].eta_seconds == 0


def test_epochs_and_steps_are_one_or_the_other():
    assert stage().epochs == 10 and stage().steps is None
    assert stage(steps=500).epochs is None
    with pytest.raises(ValidationError, match="give epochs or steps, not both"):
        stage(epochs=3, steps=500)
    # The stored spec (epochs filled in) parses again as it was.
    again = StageSpec.model_validate(stage(steps=500).model_dump())
    assert (again.epochs, again.steps) == (None, 500)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_learning_rate_and_weight_decay_default_per_optimizer(name: str):
    lr, weight_decay = OPTIMIZER_DEFAULTS[name]
    scratch = resolve_optimizer(OptimizerSpec(name=name), pretrained=False)
    assert (scratch.lr, scratch.weight_decay) == (lr, weight_decay)
    # Fine-tuning a network with weights: a smaller rate, the same decay.
    tuned = resolve_optimizer(OptimizerSpec(name=name), pretrained=True)
    assert (tuned.lr, tuned.weight_decay) == (lr * FINETUNE_LR_SHARE, weight_decay)
    given = OptimizerSpec(name=name, lr=0.3, weight_decay=0.0)
    for pretrained in (False, True):
        kept = resolve_optimizer(given, pretrained=pretrained)
        assert (kept.lr, kept.weight_decay) == (0.3, 0.0)
    # The stage resolves it with the rest, and says what it chose.
    resolved = resolve_stage(stage(optimizer={"name": name}), SHOTS, pretrained=True)
    assert resolved.optimizer == tuned
    assert describe(resolved, len(SHOTS)) == (
        f"batch 12 (5 equal batches of 10 or less), 60 epochs (300 steps), "
        f"{name} lr {lr * FINETUNE_LR_SHARE:g}, augment none"
    )


def test_augmentation_follows_the_data_kind():
    assert auto_augment(data(8, channels=1)) == "none"  # digits, text: no flips
    assert auto_augment(data(8, channels=3)) == "flip_crop"  # natural images
    assert auto_augment(data(8, regression=True)) == "none"  # a shift may change the target
    assert resolve_stage(stage(), data(8, channels=3)).augment == "flip_crop"
    assert resolve_stage(stage(augment="none"), data(8, channels=3)).augment == "none"
    # A distill stage that asks for one cached output per sample gets no augmentation;
    # one that asks for augmented views gets them, even on grey images.
    cached = DistillStage(dataset=DatasetRef(name="digits"), teacher_outputs="cache")
    assert resolve_stage(cached, data(8, channels=3)).augment == "none"
    views = DistillStage(dataset=DatasetRef(name="digits"), teacher_outputs="views")
    assert resolve_stage(views, data(8, channels=1)).augment == "crop"
    with pytest.raises(ValidationError, match="cache"):
        DistillStage(dataset=DatasetRef(name="digits"), teacher_outputs="cache", augment="crop")


def test_a_teacher_on_its_source_task_gets_crops_but_never_flips():
    assert auto_augment(data(8, channels=1), teacher=True) == "crop"  # grey: crops only
    assert auto_augment(data(8, channels=3), teacher=True) == "flip_crop"
    assert auto_augment(data(8, regression=True), teacher=True) == "none"
    assert resolve_stage(stage(), data(8, channels=1), teacher=True).augment == "crop"
    # The spec's own choice stands.
    assert resolve_stage(stage(augment="none"), data(8, channels=1), teacher=True).augment == "none"


def _train_job(target: dict, evaluate: dict | None) -> dict:
    spec = {"kind": "train", "model": {"arch": "small_cnn"}, "train": {"dataset": target}}
    if evaluate is not None:
        spec["evaluate"] = {"dataset": evaluate}
    return spec


def test_the_whole_target_trains_when_another_set_measures():
    upload, other = {"id": "target"}, {"id": "evaluation"}
    spec = parse_spec(_train_job(upload, other))
    assert spec.train.dataset.split == "all"
    assert spec.evaluate is not None and spec.evaluate.dataset.split == "all"
    # An evaluation split the spec gives is kept.
    given_eval = parse_spec(_train_job(upload, {"id": "evaluation", "split": "test"}))
    assert given_eval.evaluate is not None and given_eval.evaluate.dataset.split == "test"
    # No evaluation set, or the target's own test split: the holdout stays out.
    assert parse_spec(_train_job(upload, None)).train.dataset.split == "train"
    own = {"id": "target", "split": "test"}
    assert parse_spec(_train_job(upload, own)).train.dataset.split == "train"
    # A split the spec gives is kept.
    given = {"id": "target", "split": "train"}
    assert parse_spec(_train_job(given, other)).train.dataset.split == "train"
    pipeline = parse_spec(
        {
            "kind": "pipeline",
            "teacher": {"source": "model", "model_id": "m"},
            "student": {"arch": "small_cnn"},
            "distill": {"dataset": {"name": "digits"}},
            "finetune": {"dataset": upload},
            "evaluate": {"dataset": other},
        }
    )
    assert pipeline.finetune.dataset.split == "all"
