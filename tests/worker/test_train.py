"""The fit loop on its own: resume state, schedules, augmentation, divergence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.core.network import NetworkConfig, build_network
from app.schemas.stage_spec import DatasetRef, SchedulerSpec, StageSpec
from worker.augment import crop_batch, random_augment
from worker.checkpoints import CheckpointStore
from worker.control import JobCancelled, JobControl
from worker.data import epoch_batches, load_dataset, steps_per_epoch
from worker.objectives import supervised
from worker.schedule import resolve_optimizer
from worker.train import (
    NullSink,
    TrainingDivergedError,
    evaluate,
    fit,
    make_optimizer,
    make_schedule,
)

DIGITS = load_dataset(DatasetRef(name="digits", classes=[0, 1]), data_root=Path("."), seed=0)


def stage(**kw) -> StageSpec:
    return StageSpec(
        dataset=DatasetRef(name="digits"), **{"epochs": 2, "batch_size": 64, "min_steps": 0, **kw}
    )


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig("small_cnn", 2, 1, 8, width=0.25))


def run_fit(model, spec, objective=None, **kw):
    return fit(
        stage_name="s",
        model=model,
        train=kw.pop("train", DIGITS),
        stage=spec,
        objective=objective or supervised(),
        device=torch.device("cpu"),
        seed=0,
        control=kw.pop("control", JobControl()),
        sink=NullSink(),
        **kw,
    )


def test_fit_learns_and_records_history():
    result = run_fit(net(), stage(epochs=3))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["train_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("n", "batch", "sizes"),
    [
        (50, 12, [10] * 5),
        (49, 12, [10, 10, 10, 10, 9]),
        (65, 64, [33, 32]),
        (64, 64, [64]),
        (0, 64, []),
    ],
)
def test_an_epochs_batches_are_equal_not_full_ones_and_a_remainder(n, batch, sizes):
    # 50 images at 12 were 12, 12, 12, 12 and 2: a batch of 2 (or 1) for batch norm.
    batches = epoch_batches(n, batch, gen=torch.Generator().manual_seed(0), shuffle=True)
    assert [len(b) for b in batches] == sizes
    assert len(batches) == steps_per_epoch(n, batch)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(n))


def test_a_set_one_past_the_batch_trains_a_network_with_batch_norm():
    # resnet18 on 8x8 digits has 1x1 maps in its last stages: a last batch of one image
    # (65 at 64) raised "Expected more than 1 value per channel when training".
    torch.manual_seed(0)
    model = build_network(NetworkConfig("resnet18", 2, 1, 8))
    sixty_five = dataclasses.replace(DIGITS, x=DIGITS.x[:65], y=DIGITS.y[:65])
    result = run_fit(model, stage(epochs=1), train=sixty_five)
    assert result.history[-1]["epoch"] == 1


def test_a_nan_loss_stops_the_stage_with_advice():
    def nan_objective(model, x, y, idx):
        logits = model(x)
        return F.cross_entropy(logits, y) * float("nan"), logits

    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        run_fit(net(), stage(), nan_objective)


def test_cancel_stops_within_a_step():
    control = JobControl()
    control.cancelled.set()
    with pytest.raises(JobCancelled):
        run_fit(net(), stage(), control=control)


def test_resume_continues_exactly(tmp_path: Path):
    """Three epochs straight equal two epochs, a stop, and a resumed third."""
    straight = net()
    run_fit(straight, stage(epochs=3))
    store = CheckpointStore(tmp_path)
    first = net()

    class StopAfterTwo:
        def __init__(self):
            self.epochs = 0

        def progress(self, _progress):
            return None

        def metric(self, **_):
            self.epochs += 1

    sink = StopAfterTwo()
    control = JobControl()

    def objective(model, x, y, idx):
        if sink.epochs == 2:
            control.shutdown.set()
        return supervised()(model, x, y, idx)

    with pytest.raises(Exception, match="shutting down"):
        fit(
            stage_name="s",
            model=first,
            train=DIGITS,
            stage=stage(epochs=3),
            objective=objective,
            device=torch.device("cpu"),
            seed=0,
            control=control,
            sink=sink,
            checkpoints=store,
        )
    resumed = net()
    result = run_fit(resumed, stage(epochs=3), checkpoints=store)
    assert result.epochs_run == 1
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_cosine_schedule_with_warmup():
    optimizer = resolve_optimizer(stage().optimizer, pretrained=False)
    opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), optimizer)
    sched = make_schedule(
        opt, SchedulerSpec(name="cosine", warmup_epochs=1), total_steps=20, steps_per_epoch=10
    )
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    peak = optimizer.lr
    assert lrs[0] == pytest.approx(peak / 10)  # warm-up starts low
    assert lrs[9] == pytest.approx(peak)  # reaches the peak after one epoch
    assert lrs[-1] < 0.05 * peak  # and decays towards 0


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    a = random_augment(x, "flip_crop", torch.Generator().manual_seed(1))
    b = random_augment(x, "flip_crop", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    # A zero offset with padding p is the identity crop at (p, p).
    same = crop_batch(x, torch.full((2, 2), 1), pad=1)
    assert torch.equal(same, x)


def test_evaluate_counts_and_averages_over_the_whole_set():
    model = net()
    result = evaluate(model, DIGITS, device=torch.device("cpu"), batch_size=7)
    with torch.inference_mode():
        logits = model.eval()(DIGITS.x.float())
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == DIGITS.y).float().mean()))
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, DIGITS.y).item(), rel=1e-5)
