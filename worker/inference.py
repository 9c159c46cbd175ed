"""One batched inference loop for the worker: a network's outputs over a whole dataset.

Used for evaluation (accuracy, loss, summed batch by batch), for the teacher's cached
outputs (logits and hint features, optionally of augmented views) and for agreement with
the teacher during distillation. Runs under inference_mode, in eval mode (the previous
mode is restored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from app.core.datasets import InMemoryData
from worker.control import JobControl
from worker.data import read_batches

# A view of a batch (x, sample indices) -> x, e.g. an augmentation replayed per sample.
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FeatureHook:
    """Keeps the output of one module from the latest forward pass."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.value: torch.Tensor | None = None
        self.module = model.get_submodule(name)
        self.handle = self.module.register_forward_hook(self._store)

    def attach(self) -> None:
        """Hook the layer again after `remove` (a data-parallel rank re-hooks its copy)."""
        self.handle = self.module.register_forward_hook(self._store)

    def __getstate__(self) -> dict[str, object]:
        # The handle does not pickle; the copy is attached again where it is loaded.
        return {"module": self.module, "value": None}

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
class Outputs:
    """A network's logits (and one layer's features) for every sample of a dataset."""

    logits: torch.Tensor  # [N, K] float32, on the device
    features: torch.Tensor | None = None  # [N, ...] float32, or None


@torch.inference_mode()
def batches(
    model: nn.Module,
    data: InMemoryData,
    *,
    device: torch.device,
    batch_size: int,
    control: JobControl | None = None,
    feature_layer: str | None = None,
    transform: Transform | None = None,
) -> Iterator[tuple[slice, Outputs]]:
    """One pass of `model` over `data`, a batch of `batch_size` at a time: each batch's
    rows and its outputs (float32, on `device`). `feature_layer` also keeps that module's
    output; `transform(x, idx)` makes augmented views first."""
    was_training = model.training
    model.eval().to(device)
    hook = FeatureHook(model, feature_layer) if feature_layer else None
    try:
        starts = range(0, len(data), batch_size)
        images = None
        if data.streamed:
            # Read ahead by DataLoader processes while the network runs.
            order = torch.arange(len(data)).split(batch_size)
            images = read_batches(data.x, order, pin=device.type == "cuda")
        for start in starts:
            if control is not None:
                control.check()
            rows = slice(start, min(len(data), start + batch_size))
            x = data.x[rows] if images is None else next(images)
            x = x.to(device, non_blocking=True).float()
            if transform is not None:
                x = transform(x, torch.arange(rows.start, rows.stop))
            logits = model(x).float()
            yield rows, Outputs(logits, hook.take().float() if hook is not None else None)
    finally:
        if images is not None:
            images.close()
        if hook is not None:
            hook.remove()
        model.train(was_training)


def collect(parts: Iterable[tuple[slice, Outputs]]) -> Outputs:
    """A whole pass of `batches`, concatenated: a teacher's cache, predictions to compare.
    (Evaluation sums over the batches instead of keeping them.)"""
    logits, features = [], []
    for _rows, out in parts:
        logits.append(out.logits)
        if out.features is not None:
            features.append(out.features)
    return Outputs(
        logits=torch.cat(logits) if logits else torch.zeros(0, 0),
        features=torch.cat(features) if features else None,
    )
