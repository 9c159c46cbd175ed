"""Backends that run a finished student: PyTorch (safetensors + the architecture registry)
or ONNX Runtime (model.onnx, or its int8 quantization model.int8.onnx). None ever
unpickles anything.

Both take float32 inputs [N, C, H, W] on the model's own scale, with H and W as in
model.json `input.shape` (app.serving.inputs resizes other sizes first), and answer
float32 logits [N, classes].

Choice (`choose_backend`): on a GPU (`serving_device=cuda`) always PyTorch; otherwise the
`serving_backend` setting, where `auto` takes the one that the export measured faster
(model.json `backends.preferred`). A model without model.onnx (its export failed; model.json
`onnx.error` says why) is served by PyTorch whatever the setting.

int8 (`onnx_int8`): under `auto`, a model whose job asked for int8 and whose worker judged
it servable (model.json `int8.served`: within the accuracy budget and faster at batch 32)
is served from model.int8.onnx; the setting `onnx_int8` takes that file whenever it exists,
served or not, and falls back to the `auto` choice (with a warning) where it does not.
`onnx` and `torch` keep fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from app.config import usable_cores
from app.core.model_format import (
    INPUT_NAME,
    INT8_ONNX_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    StoredModel,
    onnx_session,
)
from app.core.network import NetworkConfig, build_network

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The model's artifacts are missing or unreadable on this server."""


class Backend(Protocol):
    name: str
    size_bytes: int

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class LoadedModel:
    """A student in memory, with what prediction needs to shape inputs and name outputs."""

    id: str
    backend: Backend
    classes: list[str]
    # (C, H, W) of the inputs the backend takes.
    input_shape: tuple[int, int, int]
    # The training data's scale: inputs are 0-1 (1.0) or 0-255 (255.0) on it.
    scale: float
    meta: dict[str, Any] = field(repr=False)

    @property
    def size_bytes(self) -> int:
        return self.backend.size_bytes

    @property
    def task(self) -> str:
        """ "regression" when the outputs are float targets, else "classification"."""
        return str(self.meta.get("task", "classification"))


class TorchBackend:
    """The Network rebuilt from the registry, weights from model.safetensors."""

    name = "torch"

    def __init__(self, folder: Path, meta: dict[str, Any], device: torch.device) -> None:
        config = NetworkConfig.from_json(meta["network"])
        weights = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        # The meta device builds the skeleton without allocating or initialising weights;
        # `assign=True` then adopts the loaded tensors as they are. A module with state
        # outside its state dict (non-persistent buffers) is rebuilt the ordinary way.
        with torch.device("meta"):
            net = build_network(config)
        net.load_state_dict(weights, strict=True, assign=True)
        if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
            net = build_network(config)
            net.load_state_dict(weights, strict=True)
        self.net = net.eval().to(device)
        self.device = device
        self.size_bytes = sum(t.numel() * t.element_size() for t in weights.values())

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.net(torch.from_numpy(x).to(self.device, non_blocking=True))
        return out.float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session on model.onnx (CPU), or on model.int8.onnx as `onnx_int8`:
    both take the same input and answer float32 logits (the int8 graph quantizes and
    dequantizes inside)."""

    name = "onnx"

    def __init__(
        self, folder: Path, meta: dict[str, Any], threads: int, *, int8: bool = False
    ) -> None:
        path = folder / (INT8_ONNX_FILE if int8 else ONNX_FILE)
        if int8:
            self.name = "onnx_int8"
        self.session = onnx_session(str(path), threads=threads)
        self.input_name = meta.get("onnx", {}).get("input", INPUT_NAME)
        self.output_name = meta.get("onnx", {}).get("output", OUTPUT_NAME)
        self.size_bytes = path.stat().st_size

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


# Models already warned about: the choice is made on every listing and load, and one
# warning per model says all there is to say. Bounded: ids are kept, not models.
_warned: set[str] = set()


def _warn_once(model_id: str, message: str) -> None:
    if model_id not in _warned and len(_warned) < 100_000:
        _warned.add(model_id)
        log.warning("%s", message)


def choose_backend(meta: dict[str, Any], folder: Path, *, setting: str, device: str) -> str:
    """'torch', 'onnx' or 'onnx_int8' for this model under the serving settings (see the
    module doc)."""
    if device == "cuda":
        return "torch"
    int8 = meta.get("int8") or {}
    has_int8 = INT8_ONNX_FILE in meta.get("files", []) and (folder / INT8_ONNX_FILE).is_file()
    if setting == "onnx_int8":
        if has_int8:
            return "onnx_int8"
        reason = int8.get("error") or (
            "model.int8.onnx is missing" if int8 else "its job did not ask for int8"
        )
        _warn_once(
            meta["id"], f"model {meta['id']} has no int8 graph ({reason}); serving with fp32"
        )
        setting = "auto"
    if setting == "auto" and has_int8 and int8.get("served") is True:
        return "onnx_int8"
    has_onnx = ONNX_FILE in meta.get("files", []) and (folder / ONNX_FILE).is_file()
    if setting == "torch" or not has_onnx:
        if setting == "onnx":
            reason = meta.get("onnx", {}).get("error", "model.onnx is missing")
            _warn_once(
                meta["id"], f"model {meta['id']} has no ONNX graph ({reason}); serving torch"
            )
        return "torch"
    if setting == "onnx":
        return "onnx"
    return "onnx" if meta.get("backends", {}).get("preferred") == "onnx" else "torch"


def serving_threads(setting: int, processes: int = 1) -> int:
    """Intra-op threads for one forward pass; 0 = half the cores shared among the API's
    `processes`, at least one each.

    The event loops (HTTP parsing, JSON, auth) need cores of their own, and small
    students run faster on one thread than on many, so the default leaves half the
    machine free.
    """
    if setting > 0:
        return setting
    return max(1, usable_cores() // (2 * max(1, processes)))


def load_model(
    ref: StoredModel, *, setting: str, device: torch.device, threads: int
) -> LoadedModel:
    """Load a student; ModelUnavailableError when its files are missing or unreadable."""
    meta = ref.meta
    try:
        shape = tuple(int(v) for v in meta["input"]["shape"])
        c, h, w = shape
        scale = float(meta["input"].get("scale", meta["network"].get("scale", 1.0)))
        classes = [str(name) for name in meta["classes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailableError(f"model {ref.id}: model.json lacks {exc}") from exc
    choice = choose_backend(meta, ref.folder, setting=setting, device=device.type)
    needed = {"onnx": ONNX_FILE, "onnx_int8": INT8_ONNX_FILE}.get(choice, WEIGHTS_FILE)
    if not (ref.folder / needed).is_file():
        raise ModelUnavailableError(f"model {ref.id}: its artifact {needed} is missing")
    try:
        backend: Backend
        if choice in ("onnx", "onnx_int8"):
            backend = OnnxBackend(ref.folder, meta, threads, int8=choice == "onnx_int8")
        else:
            backend = TorchBackend(ref.folder, meta, device)
    except Exception as exc:
        log.exception("model %s: loading with %s failed", ref.id, choice)
        raise ModelUnavailableError(
            f"model {ref.id}: its {choice} artifacts cannot be loaded ({type(exc).__name__})"
        ) from exc
    log.info("model %s loaded with %s (%d bytes)", ref.id, backend.name, backend.size_bytes)
    return LoadedModel(ref.id, backend, classes, (c, h, w), scale, meta)
