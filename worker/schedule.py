"""A stage's spec made concrete for the data it fits on: batch size, length, augmentation.

A user types epochs, and epochs mean different things on 50 images and on 60,000: at the
old fixed batch of 64, "60 epochs of 50 images" were 60 optimiser steps, too few to train
anything. So, unless the spec says otherwise:

- the batch is 64 but never more than a quarter of the set (50 images: 12 a batch, so
  every epoch takes several steps);
- a stage given in epochs takes at least `min_steps` optimiser steps (its epochs are
  raised to reach them);
- a stage may instead be given in `steps`, and then stops after exactly that many;
- the learning rate and weight decay are the optimiser's defaults, the rate a fifth of it
  when the stage fine-tunes a network that already has weights, warmed up over the first
  5% of the steps;
- augmentation follows the data's kind: flips and crops for colour (natural) images, the
  usual recipe for them; none for grey ones (digits and text-like images, which a flip
  would turn into another symbol, and where crops cost accuracy in the sweep of
  docs/benchmarks.md: on digits and on Fashion-MNIST's short schedules), except crops for
  a teacher, whose job is to transfer and to teach, not to score on its training set:
  trained on its source task with crops it made a better fine-tuned teacher and student
  on every measured seed, and adapted to a 50-image target with crops it scored higher
  on every seed; none for regression targets (a shifted image may mean another target).

`resolve_stage` returns a StageSpec with every one of these decided, so the fit loop, the
teacher-output cache and the progress events all see the same numbers.
"""

from __future__ import annotations

import math
from typing import TypeVar

from app.core.datasets import InMemoryData
from app.schemas.stage_spec import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_WARMUP_SHARE,
    FINETUNE_LR_SHARE,
    OPTIMIZER_DEFAULTS,
    OptimizerSpec,
    StageSpec,
)
from worker.data import steps_per_epoch

S = TypeVar("S", bound=StageSpec)


def auto_batch_size(n: int) -> int:
    """64, but at most a quarter of the set (at least 1)."""
    return max(1, min(DEFAULT_BATCH_SIZE, n // 4))


def auto_augment(data: InMemoryData, *, teacher: bool = False) -> str:
    """The augmentation that keeps the data's meaning: see the module docstring.
    `teacher`: the stage trains a teacher (on its source task, or adapting it to the
    target)."""
    if data.task == "regression":
        return "none"
    if data.x.shape[1] == 3:
        return "flip_crop"
    return "crop" if teacher else "none"


def resolve_optimizer(spec: OptimizerSpec, *, pretrained: bool) -> OptimizerSpec:
    """The optimiser's unset learning rate and weight decay filled in: its defaults for a
    network from scratch, a smaller rate for one that has weights (fine-tuning)."""
    lr, weight_decay = OPTIMIZER_DEFAULTS[spec.name]
    if pretrained:
        lr *= FINETUNE_LR_SHARE
    return spec.model_copy(
        update={
            "lr": spec.lr if spec.lr is not None else lr,
            "weight_decay": spec.weight_decay if spec.weight_decay is not None else weight_decay,
        }
    )


def resolve_stage(
    stage: S, data: InMemoryData, *, pretrained: bool = False, teacher: bool = False
) -> S:
    """`stage` with its batch size, epochs, learning rate and augmentation decided for
    `data` (a copy; an already concrete stage comes back equal). `pretrained`: the stage
    fine-tunes a network that has weights; `teacher`: it trains a teacher (on its source
    task, or adapting it to the target)."""
    n = len(data)
    batch = stage.batch_size if stage.batch_size is not None else auto_batch_size(n)
    per_epoch = max(1, steps_per_epoch(n, batch))
    if stage.steps is not None:
        epochs = math.ceil(stage.steps / per_epoch)
    else:
        assert stage.epochs is not None  # the spec fills 10 when neither is given
        epochs = max(stage.epochs, math.ceil(stage.min_steps / per_epoch))
    augment = stage.augment
    if augment == "auto":
        augment = auto_augment(data, teacher=teacher)
        outputs = getattr(stage, "teacher_outputs", None)
        if outputs == "cache":
            augment = "none"  # asked for one cached output per sample
        elif outputs == "views" and augment == "none":
            augment = "crop"  # asked for augmented views
    optimizer = resolve_optimizer(stage.optimizer, pretrained=pretrained)
    scheduler = stage.scheduler
    if scheduler.warmup_epochs is None:
        steps = min(epochs * per_epoch, stage.steps or epochs * per_epoch)
        warmup = DEFAULT_WARMUP_SHARE * steps / per_epoch
        scheduler = scheduler.model_copy(update={"warmup_epochs": warmup})
    return stage.model_copy(
        update={
            "batch_size": batch,
            "epochs": epochs,
            "augment": augment,
            "optimizer": optimizer,
            "scheduler": scheduler,
        }
    )


def total_steps(stage: StageSpec, n: int) -> int:
    """Optimiser steps of a resolved stage over `n` samples."""
    assert stage.batch_size is not None and stage.epochs is not None
    full = stage.epochs * steps_per_epoch(n, stage.batch_size)
    return min(full, stage.steps) if stage.steps is not None else full


def describe(stage: StageSpec, n: int) -> str:
    """A resolved stage's schedule in words, for its start event: what the defaults chose."""
    opt = stage.optimizer
    assert stage.batch_size is not None
    per_epoch = max(1, steps_per_epoch(n, stage.batch_size))
    batch = f"batch {stage.batch_size}"
    largest = math.ceil(n / per_epoch)
    if largest != stage.batch_size:
        # An epoch's batches are cut equal (worker/data.py): say what the steps really see.
        batch += f" ({per_epoch} equal batches of {largest} or less)"
    return (
        f"{batch}, {stage.epochs} epochs ({total_steps(stage, n)} steps), "
        f"{opt.name} lr {opt.lr:g}, augment {stage.augment}"
    )
