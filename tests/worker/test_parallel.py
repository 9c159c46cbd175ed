"""Data-parallel training (worker/parallel.py): 2 gloo processes on the CPU, for real."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.core.archs import head_name
from app.core.network import NetworkConfig, build_network
from app.schemas.resources import Resources
from app.schemas.stage_spec import DatasetRef, StageSpec
from tests.helpers import tiny_teacher_spec
from tests.worker.jobrun import events, run
from worker.checkpoints import CheckpointStore
from worker.control import JobCancelled, JobControl
from worker.data import load_dataset
from worker.objectives import supervised
from worker.parallel import fit_in_processes
from worker.rank import FitTask
from worker.stages import Accuracy, FreezeBackbone
from worker.train import NullSink, TrainingDivergedError, evaluate, fit

CPU = torch.device("cpu")
TRAIN = load_dataset(DatasetRef(name="digits"), data_root=Path("."), seed=0)
TEST = load_dataset(DatasetRef(name="digits", split="test"), data_root=Path("."), seed=0)


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig("small_cnn", 10, 1, 8, width=0.5))


def stage(**kw) -> StageSpec:
    return StageSpec(dataset=DatasetRef(name="digits"), **{"batch_size": 64, "min_steps": 0, **kw})


def task(model: torch.nn.Module, spec: StageSpec, objective=None, store=None) -> FitTask:
    return FitTask(
        stage_name="s",
        model=model,
        train=TRAIN,
        stage=spec,
        objective=objective or supervised(),
        seed=0,
        checkpoints=store,
        eval_fn=Accuracy(TEST),
        extra_modules=None,
        on_epoch_start=None,
        hooks=[],
    )


def in_two(t: FitTask, control: JobControl | None = None, sink=None):
    return fit_in_processes(
        t,
        processes=2,
        device=CPU,
        control=control or JobControl(),
        sink=sink or NullSink(),
        threads=2,
    )


class Metrics:
    """A sink that keeps rank 0's metrics, as the job's events would."""

    def __init__(self, on_metric=None) -> None:
        self.metrics: list[dict] = []
        self.progress_seen = 0
        self.on_metric = on_metric

    def progress(self, _progress) -> None:
        self.progress_seen += 1

    def metric(self, *, stage: str, epoch: int, values: dict) -> None:
        self.metrics.append({"epoch": epoch, **values})
        if self.on_metric is not None:
            self.on_metric(epoch)


def test_two_processes_train_as_well_as_one_and_hand_back_the_weights(tmp_path: Path):
    spec = stage(epochs=6)
    one = fit(
        stage_name="s",
        model=net(),
        train=TRAIN,
        stage=spec,
        objective=supervised(),
        device=CPU,
        seed=0,
        control=JobControl(),
        sink=NullSink(),
        eval_fn=Accuracy(TEST),
    )
    model, sink = net(), Metrics()
    t = task(model, spec, store=CheckpointStore(tmp_path))
    # The head alone trains in epoch 1: DDP is told that some parameters sit out.
    t.on_epoch_start = FreezeBackbone(model, "backbone." + head_name(model.backbone), 1)
    two = in_two(t, sink=sink)
    assert [h["epoch"] for h in two.history] == list(range(1, 7))
    assert two.epochs_run == 6
    # The same steps and learning rates as one process (whose first epoch trained
    # everything): the same accuracy within a point.
    one_acc, two_acc = one.history[-1]["val_accuracy"], two.history[-1]["val_accuracy"]
    assert two_acc > 0.9 and abs(two_acc - one_acc) <= 0.01, (one_acc, two_acc)
    # The worker's copy holds rank 0's weights; rank 0's metrics reached the sink.
    assert evaluate(model, TEST, device=CPU)["accuracy"] == pytest.approx(two_acc)
    assert [m["epoch"] for m in sink.metrics] == list(range(1, 7)) and sink.progress_seen > 0
    # Figures summed over both ranks: every sample of the epoch counted once.
    assert two.history[-1]["train_accuracy"] > 0.9
    # Rank 0 wrote each epoch's checkpoint; the last one is the whole stage.
    assert int(CheckpointStore(tmp_path).load_fit("s")["epoch"]) == 6
    # And the rank processes are gone.
    ranks = [p for p in multiprocessing.active_children() if p.name.startswith("SpawnProcess")]
    assert ranks == []


def test_a_cancel_stops_every_rank_and_a_resume_goes_on_from_the_checkpoint(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    control = JobControl()

    def cancel_after_two(epoch: int) -> None:
        if epoch == 2:
            control.cancelled.set()

    with pytest.raises(JobCancelled):
        in_two(task(net(), stage(epochs=40), store=store), control, Metrics(cancel_after_two))
    saved = int(store.load_fit("s")["epoch"])
    assert 2 <= saved < 40
    # A later attempt (any number of processes) resumes after the saved epoch.
    sink = Metrics()
    result = in_two(task(net(), stage(epochs=saved + 1), store=store), sink=sink)
    assert [m["epoch"] for m in sink.metrics] == [saved + 1]
    assert result.epochs_run == 1 and len(result.history) == saved + 1


class NanLoss:
    """Picklable, as every objective handed to the ranks must be."""

    def __call__(self, model, x, y, idx):
        logits = model(x)
        return F.cross_entropy(logits, y) * float("nan"), logits


def test_a_rank_that_diverges_fails_the_stage_with_the_same_advice():
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        in_two(task(net(), stage(epochs=1), objective=NanLoss()))


def test_resources_decide_the_process_count():
    assert Resources().world_size() == 1
    assert Resources(gpus=4).world_size() == 4
    assert Resources(processes=2).world_size() == 2
    assert Resources(gpus=4, processes=2).world_size() == 2
    with pytest.raises(ValueError, match="3 processes for 2 GPUs"):
        Resources(gpus=2, processes=3)


# The ranks' work does not depend on the database: one backend is enough here.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_hint_distillation_runs_as_two_processes_through_the_worker(env):
    """A distill job through the real worker with `resources.processes`: the teacher's
    training and the hint distillation (hooks re-attached in each rank, the adapter's
    gradients averaged over the ranks) each run as 2 processes."""
    spec = {
        "kind": "distill",
        "teacher": tiny_teacher_spec(width=1.0),
        "student": {"arch": "small_cnn", "width": 0.25},
        "distill": {
            "dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
            "loss": {"type": "hint"},
            "epochs": 3,
            "min_steps": 0,
        },
        "resources": {"processes": 2},
    }
    job = run(spec)
    assert job.state == "SUCCEEDED", job.error
    last = {m["stage"]: m for m in events(job.id, "metric")}
    assert set(last) == {"teacher", "distill"}
    assert last["teacher"]["epoch"] == 2 and last["teacher"]["val_accuracy"] > 0.9
    # Three epochs of hint distillation agree with the teacher well above chance (0.2).
    assert last["distill"]["epoch"] == 3 and last["distill"]["val_agreement"] > 0.5
