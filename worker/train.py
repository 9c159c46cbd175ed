"""One fit loop for every stage (teacher training, distillation, fine-tuning, baselines).

`fit` reads top to bottom: build the optimiser and schedule, resume from the stage's
checkpoint if there is one, then epochs of shuffled index batches (over tensors in
memory, or read ahead by DataLoader processes for a dataset by URL).
What a stage optimises is its `Objective` (worker/objectives.py): a function of (model,
inputs, labels, indices) that returns the loss and the logits. Every hyperparameter comes
from the validated `StageSpec`; their units are documented there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from app.core.datasets import InMemoryData
from app.schemas.stage_spec import OptimizerSpec, SchedulerSpec, StageSpec
from worker.augment import random_augment
from worker.checkpoints import CheckpointStore
from worker.control import JobControl, StopRequested
from worker.data import EpochReader, Images, epoch_batches, steps_per_epoch
from worker.inference import batches
from worker.schedule import resolve_stage, total_steps

if TYPE_CHECKING:
    from worker.rank import Rank

log = logging.getLogger(__name__)

# Evaluation batch size: larger than training batches, no gradients are kept.
EVAL_BATCH_SIZE = 512


class Objective(Protocol):
    """What a stage optimises (worker/objectives.py): (loss, logits) for a batch."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# A stage's per-epoch evaluation: the model -> named scores (on the model's device).
EvalFn = Callable[[nn.Module], dict[str, float]]


class TrainingDivergedError(RuntimeError):
    """The loss went to NaN or infinity: the stage cannot produce a usable network."""


@dataclass
class Progress:
    """Where a fit is: its stage, epoch and step, and the epoch's running loss."""

    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int
    # The epoch's running mean loss; reading it syncs with the device, so call it rarely.
    loss: Callable[[], float]
    eta_seconds: float | None


class ProgressSink(Protocol):
    """Where a fit reports to (worker.events.Reporter, or a no-op in benchmarks)."""

    def progress(self, progress: Progress) -> None:
        """Called every step."""

    def metric(self, *, stage: str, epoch: int, values: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(params: Iterable[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    assert spec.lr is not None and spec.weight_decay is not None  # worker/schedule.py
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier of the peak lr: linear warm-up, then constant or cosine to 0."""
    assert spec.warmup_epochs is not None  # worker/schedule.py
    warmup = round(spec.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.name == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(
    model: nn.Module, data: InMemoryData, *, device: torch.device, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a labelled set; for regression targets the mean
    squared error (summed over targets) and the mean absolute error."""
    if data.y is None:
        raise ValueError("evaluation needs a labelled dataset")
    regression = data.y.is_floating_point()
    correct, loss_sum, abs_sum = 0, 0.0, 0.0
    for rows, out in batches(model, data, device=device, batch_size=batch_size):
        logits = out.logits
        y = data.y[rows].to(device, non_blocking=True)
        if regression:
            loss_sum += (logits - y).pow(2).sum().item()
            abs_sum += (logits - y).abs().mean(dim=1).sum().item()
        else:
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    n = max(1, len(data))
    if regression:
        return {"mse": loss_sum / n, "mae": abs_sum / n}
    return {"accuracy": correct / n, "loss": loss_sum / n}


def fit(
    *,
    stage_name: str,
    model: nn.Module,
    train: InMemoryData,
    stage: StageSpec,
    objective: Objective,
    device: torch.device,
    seed: int,
    control: JobControl,
    sink: ProgressSink,
    checkpoints: CheckpointStore | None = None,
    eval_fn: EvalFn | None = None,
    extra_modules: nn.ModuleDict | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    rank: Rank | None = None,
) -> FitResult:
    """Train `model` on `train` for `stage.epochs`, resuming from the stage's checkpoint.

    `extra_modules` (a hint adapter, say) are optimised and checkpointed with the model.
    `on_epoch_start(epoch)` may change which parameters train (a frozen backbone); the
    optimiser holds every parameter, and frozen ones simply get no gradient.
    `rank`: this process is one of several data-parallel ones (worker/parallel.py); each
    step trains on its share of the global batch, and rank 0 alone writes checkpoints.
    """
    started = time.perf_counter()
    # Batch size, epochs and augmentation decided for this data (the callers resolved it
    # already to announce the stage; resolving again changes nothing).
    stage = resolve_stage(stage, train)
    assert stage.epochs is not None and stage.batch_size is not None
    cuda = device.type == "cuda"
    if cuda:
        # Fixed input shapes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    bf16 = stage.precision == "bf16" or (stage.precision == "auto" and cuda)
    # The wrapped (DDP) and compiled modules share parameters with `model`; checkpoints
    # use `model`.
    step_model = model
    if rank is not None:
        # DDP must know in advance that some parameters will sit out (a frozen backbone).
        some_frozen = getattr(on_epoch_start, "freezes", False)
        step_model = rank.wrap(model, some_frozen=some_frozen)
    step_model = torch.compile(step_model) if stage.compile else step_model
    data_x, data_y = resident_data(train, device)
    trainable = list(model.parameters())
    if extra_modules is not None:
        trainable += list(extra_modules.parameters())
    optimizer = make_optimizer(trainable, stage.optimizer)
    n_steps = steps_per_epoch(len(train), stage.batch_size)
    # `steps` may end the last epoch early; otherwise whole epochs.
    all_steps = total_steps(stage, len(train))
    schedule = make_schedule(
        optimizer, stage.scheduler, total_steps=all_steps, steps_per_epoch=n_steps
    )
    # One generator drives shuffling and augmentation, so a resumed stage replays exactly.
    gen = torch.Generator().manual_seed(seed)
    result = FitResult(epochs_run=0)
    start_epoch = 0
    if checkpoints is not None and (state := checkpoints.load_fit(stage_name)) is not None:
        model.load_state_dict(state["model"])
        if extra_modules is not None and "extra" in state:
            extra_modules.load_state_dict(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        result.history = list(state.get("history", []))
        log.info("%s: resuming after epoch %d of %d", stage_name, start_epoch, stage.epochs)

    model.train()
    step_seconds: float | None = None  # moving average, for an honest ETA
    eval_seconds = 0.0
    aug_gen = gen
    reader = EpochReader(data_x, pin=cuda)
    try:
        for epoch in range(start_epoch, stage.epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            if rank is not None:
                # Every rank draws the same shuffle from `gen`; augmentation and dropout differ
                # per rank, seeded by (seed, epoch, rank) so a resumed epoch replays them.
                aug_gen = torch.Generator().manual_seed(hash((seed, epoch, rank.rank)) % 2**62)
                torch.manual_seed(hash((seed, epoch, rank.rank, 1)) % 2**62)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            # The stage may end inside this epoch (`steps`).
            batches = epoch_batches(len(train), stage.batch_size, gen=gen, shuffle=True)
            batches = batches[: max(0, all_steps - epoch * n_steps)]
            # Each rank trains on its share of every global batch.
            shards = batches if rank is None else [rank.shard(idx) for idx in batches]
            images = reader.epoch(shards)
            # Step time includes waiting for the batch (a streamed set's reads), for the ETA.
            last = time.perf_counter()
            for step, (idx, x_batch) in enumerate(zip(shards, images, strict=True)):
                if rank is None:
                    control.check()
                elif rank.stop_requested():
                    raise StopRequested(f"{stage_name}: stopped at the worker's request")
                x = x_batch.to(device, non_blocking=True).float()
                if stage.augment != "none":
                    x = random_augment(x, stage.augment, aug_gen)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = None
                if data_y is not None:
                    y = data_y[idx.to(data_y.device)].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, logits = objective(step_model, x, y, idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if rank is not None and extra_modules is not None:
                    rank.average_gradients(list(extra_modules.parameters()))
                optimizer.step()
                schedule.step()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(idx)
                if y is not None and not y.is_floating_point():
                    correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)
                now = time.perf_counter()
                dt, last = now - last, now
                step_seconds = dt if step_seconds is None else 0.9 * step_seconds + 0.1 * dt
                done_steps = epoch * n_steps + step + 1
                remaining = all_steps - done_steps
                eta = remaining * step_seconds + (stage.epochs - epoch) * eval_seconds
                sink.progress(
                    Progress(
                        stage=stage_name,
                        epoch=epoch + 1,
                        epochs=stage.epochs,
                        step=done_steps,
                        steps=all_steps,
                        loss=lambda s=loss_sum, n=seen: float(s) / max(1, n),
                        eta_seconds=eta,
                    )
                )
            # The epoch's figures (over every rank's samples when there are several).
            loss_total, correct_total, seen_total = (
                (float(loss_sum), float(correct), float(seen))
                if rank is None
                else rank.sum(loss_sum, correct, torch.tensor(float(seen)))
            )
            values = {
                "train_loss": loss_total / max(1, seen_total),
                "lr": schedule.get_last_lr()[0],
            }
            if not math.isfinite(values["train_loss"]):
                # NaN weights would otherwise "succeed" and be served; say what to change.
                raise TrainingDivergedError(
                    f"{stage_name}: the training loss became {values['train_loss']} in epoch "
                    f"{epoch + 1}; lower the learning rate ({stage.optimizer.lr}) or add warm-up"
                )
            if train.y is not None and not train.y.is_floating_point():
                values["train_accuracy"] = correct_total / max(1, seen_total)
            last = epoch + 1 == stage.epochs
            due = stage.eval_every > 0 and (epoch + 1) % stage.eval_every == 0
            if eval_fn is not None and (last or due):
                t_eval = time.perf_counter()
                values.update({f"val_{k}": v for k, v in eval_fn(model).items()})
                model.train()
                # Spread over the epochs between evaluations, for the ETA.
                eval_seconds = (time.perf_counter() - t_eval) / max(1, stage.eval_every)
            result.history.append({"epoch": epoch + 1, **values})
            sink.metric(stage=stage_name, epoch=epoch + 1, values=values)
            if checkpoints is not None and (rank is None or rank.writes):
                state = {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": result.history,
                }
                if extra_modules is not None:
                    state["extra"] = extra_modules.state_dict()
                checkpoints.save_fit(stage_name, state)
            result.epochs_run += 1
    finally:
        # A stop or an error: a streamed set's reader processes end now.
        reader.close()
    result.seconds = time.perf_counter() - started
    return result


# Keep a dataset on the GPU when it takes at most this share of the free memory.
GPU_RESIDENT_SHARE = 0.4


def resident_data(data: InMemoryData, device: torch.device) -> tuple[Images, torch.Tensor | None]:
    """The tensors batches are indexed from: on the GPU when the set fits there (no copy
    per step), else pinned host memory for asynchronous copies; as they are on a CPU."""
    if device.type != "cuda" or not isinstance(data.x, torch.Tensor):
        # On a CPU, or streamed: batches come from where the data is (read_batches).
        return data.x, data.y
    free, _total = torch.cuda.mem_get_info(device)
    if data.x.numel() * data.x.element_size() <= GPU_RESIDENT_SHARE * free:
        y = data.y.to(device) if data.y is not None else None
        return data.x.to(device), y
    return data.x.pin_memory(), data.y.pin_memory() if data.y is not None else None


class NullSink:
    """A sink that records nothing (benchmarks, tests)."""

    def progress(self, progress: Progress) -> None:
        return None

    def metric(self, **_: Any) -> None:
        return None
