"""Uploaded teacher weights: a safetensors file checked against its architecture.

The file is never loaded as a model here. Its header (tensor names, dtypes and shapes)
is compared with the state dict of the named architecture built on the meta device,
which costs no memory, so a checkpoint that would not load in the worker is refused on
upload with the names of the tensors at fault. Two layouts are accepted, the same two
that the worker's `load_weights` (worker/build.py) loads:

- a bare backbone's state dict, e.g. torchvision's resnet18 (`conv1.weight`, `fc.weight`);
- a whole `app.core.network.Network` state dict (`backbone.` prefixes plus the
  preprocessing buffers `scale`, `mean`, `std`), e.g. a model.safetensors this service
  exported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from sqlalchemy.orm import Session

from app.core.archs import ARCHS, arch_info, head_name
from app.core.files import move_into_place
from app.core.network import NetworkConfig, build_network
from app.core.registry import UnknownNameError
from app.models import Checkpoint
from app.models.base import new_id, utcnow
from app.schemas.checkpoint import CheckpointForm, CheckpointOut
from app.schemas.names import display_name
from app.services import owned
from app.services.upload_rules import reject

log = logging.getLogger(__name__)

# The Network's preprocessing buffers: optional in an uploaded file (the worker sets them
# from the data it trains on), but their values tell the normalisation the weights expect.
PREPROCESS_KEYS = ("scale", "mean", "std")
BACKBONE_PREFIX = "backbone."
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})
# How many offending tensors a message names, per kind of problem.
SHOW = 5
# The largest small_cnn width tried (CheckpointForm.width's bound).
MAX_WIDTH = 16.0


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass
class FileContents:
    tensors: dict[str, TensorInfo]
    # Values of the preprocessing buffers of a Network-layout file, when present.
    mean: list[float] | None
    std: list[float] | None


# ------------------------------------------------------------------------- reading
def read_safetensors(path: Path) -> FileContents:
    """Tensor names, dtypes and shapes from the header; 422 naming `file` if unreadable."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    looks_safetensors = head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8
    pickle_magic = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if not looks_safetensors and (pickle_magic or head[:4] == b"PK\x03\x04"):
        # torch.save writes a pickle, or a zip holding one; loading it could run any code.
        reject(
            "this is a pickle (torch.save) file, not safetensors; pickles are never loaded "
            "here. Convert it: safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors')"
        )
    tensors: dict[str, TensorInfo] = {}
    buffers: dict[str, list[float]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                piece = f.get_slice(name)
                tensors[name] = TensorInfo(str(piece.get_dtype()), tuple(piece.get_shape()))
            for name in ("mean", "std"):
                if name in tensors and math.prod(tensors[name].shape) <= 3:
                    buffers[name] = f.get_tensor(name).flatten().double().tolist()
    except Exception as exc:  # the Rust reader raises its own types; all mean "unreadable"
        reject(f"not a readable safetensors file ({exc})")
    if not tensors:
        reject("the safetensors file holds no tensors")
    return FileContents(tensors, buffers.get("mean"), buffers.get("std"))


def _expected(arch: str, num_classes: int, in_channels: int, width: float) -> dict[str, Any]:
    """The Network's state dict (names -> meta tensors) for this configuration."""
    config = NetworkConfig(arch, num_classes, in_channels, image_size=32, width=width)
    with torch.device("meta"):
        net = build_network(config)
    return dict(net.state_dict())


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Fit:
    """How a file compares with an architecture's state dict."""

    missing: list[str]
    unexpected: list[str]
    wrong: list[tuple[str, str, str]]  # (name, expected, got)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.wrong)


def compare(tensors: dict[str, TensorInfo], expected: dict[str, Any], *, network: bool) -> Fit:
    """Compare the file's tensors with the expected state dict (Network names)."""
    if not network:
        expected = {
            k[len(BACKBONE_PREFIX) :]: v
            for k, v in expected.items()
            if k.startswith(BACKBONE_PREFIX)
        }
    # BatchNorm fills in a missing num_batches_tracked on load; the preprocessing buffers
    # come from the data the worker trains on.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    if network:
        optional |= set(PREPROCESS_KEYS)
    missing = sorted(k for k in expected if k not in tensors and k not in optional)
    unexpected = sorted(k for k in tensors if k not in expected)
    wrong: list[tuple[str, str, str]] = []
    for name in sorted(set(tensors) & set(expected)):
        if name in PREPROCESS_KEYS:
            continue  # the worker replaces them; their channel count is checked elsewhere
        got, want = tensors[name], expected[name]
        if got.shape != tuple(want.shape):
            wrong.append((name, _fmt(tuple(want.shape)), _fmt(got.shape)))
        elif want.dtype.is_floating_point and got.dtype not in FLOAT_DTYPES:
            wrong.append((name, "a float tensor", f"dtype {got.dtype}"))
    return Fit(missing, unexpected, wrong)


def _check_arch(arch: str) -> None:
    try:
        ARCHS.get(arch)
    except UnknownNameError as exc:
        reject(str(exc), "arch")


def _first_conv(tensors: dict[str, TensorInfo], network: bool) -> TensorInfo | None:
    prefix = BACKBONE_PREFIX if network else ""
    return tensors.get(f"{prefix}stage1.0.weight")


def _in_channels(
    form: CheckpointForm, contents: FileContents, *, small_cnn: bool, network: bool
) -> int:
    """The channels of the data the weights expect: given, else read from the file, else 3."""
    found: tuple[int, str] | None = None
    if network and "mean" in contents.tensors:
        shape = contents.tensors["mean"].shape
        if len(shape) == 4 and shape[1] in (1, 3):
            found = (shape[1], "the file's mean buffer")
    if found is None and small_cnn:
        conv = _first_conv(contents.tensors, network)
        if conv is not None and len(conv.shape) == 4 and conv.shape[1] in (1, 3):
            found = (conv.shape[1], "the file's first convolution")
    if form.in_channels is not None:
        if found is not None and found[0] != form.in_channels:
            reject(f"{found[1]} has {found[0]} channels, not {form.in_channels}", "in_channels")
        return form.in_channels
    return found[0] if found is not None else 3


def _width_candidates(form: CheckpointForm, contents: FileContents, network: bool) -> list[float]:
    """Widths to try for small_cnn: the given one, else 1 and those the channels imply."""
    if form.width is not None:
        return [form.width]
    prefix = BACKBONE_PREFIX if network else ""
    widths = [1.0]
    for stage, base in (("stage3", 64), ("stage2", 32), ("stage1", 16)):
        conv = contents.tensors.get(f"{prefix}{stage}.0.weight")
        # Only widths the form itself accepts: a crafted shape (2**40 channels) would
        # overflow even on the meta device.
        if conv is not None and conv.shape and 0 < conv.shape[0] / base <= MAX_WIDTH:
            widths.append(conv.shape[0] / base)
    return list(dict.fromkeys(widths))


def _describe_misfit(fit: Fit, *, arch: str, network: bool, config: str) -> str:
    parts: list[str] = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} tensor(s) missing (e.g. {', '.join(fit.missing[:SHOW])})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected (e.g. {', '.join(fit.unexpected[:SHOW])})")
    if fit.wrong:
        shown = "; ".join(f"{n}: expected {w}, got {g}" for n, w, g in fit.wrong[:SHOW])
        parts.append(f"{len(fit.wrong)} with the wrong shape or dtype ({shown})")
    message = f"does not fit {arch} with {config}: " + "; ".join(parts)
    # The most common mistake: a head trained for another number of classes.
    with torch.device("meta"):
        backbone = arch_info(arch).build(1, 3, 1.0)
    head = f"{BACKBONE_PREFIX if network else ''}{head_name(backbone)}.weight"
    for name, _want, got in fit.wrong:
        if name == head:
            outputs = got.strip("[]").split(",")[0]
            message += f". The file's head has {outputs} outputs: is num_classes {outputs}?"
    if any(k.startswith("module.") for k in fit.unexpected):
        message += ". Names start with 'module.': save model.module.state_dict() instead"
    return message


def check_fit(form: CheckpointForm, contents: FileContents) -> tuple[int, float, bool]:
    """(in_channels, width, network layout) once the file fits `form.arch`; else 422."""
    network = any(k.startswith(BACKBONE_PREFIX) for k in contents.tensors)
    small_cnn = arch_info(form.arch).family == "small_cnn"
    if not small_cnn and form.width not in (None, 1.0):
        reject("width applies to small_cnn only", "width")
    in_channels = _in_channels(form, contents, small_cnn=small_cnn, network=network)
    widths = _width_candidates(form, contents, network) if small_cnn else [1.0]
    best: tuple[Fit, float] | None = None
    for width in widths:
        expected = _expected(form.arch, form.num_classes, in_channels, width)
        fit = compare(contents.tensors, expected, network=network)
        if fit.ok:
            return in_channels, width, network
        if best is None or fit.problems < best[0].problems:
            best = (fit, width)
    assert best is not None
    fit, width = best
    config = f"num_classes={form.num_classes}, in_channels={in_channels}"
    if small_cnn:
        config += f", width={width:g}"
    reject(_describe_misfit(fit, arch=form.arch, network=network, config=config))


def _normalisation(
    form: CheckpointForm, contents: FileContents, in_channels: int
) -> dict[str, list[float]]:
    """mean/std for meta: the form's, else a Network file's own buffers (if sensible)."""
    if (form.mean is None) != (form.std is None):
        have, lacking = ("mean", "std") if form.mean is not None else ("std", "mean")
        reject(f"missing: {have} was given, and normalisation needs both mean and std", lacking)
    out: dict[str, list[float]] = {}
    for key in ("mean", "std"):
        given: list[float] | None = getattr(form, key)
        if given is not None:
            if len(given) != in_channels:
                reject(f"expected {in_channels} value(s), one per channel, got {len(given)}", key)
            out[key] = [float(v) for v in given]
            continue
        found: list[float] | None = getattr(contents, key)
        if (
            found is not None
            and len(found) == in_channels
            and all(math.isfinite(v) for v in found)
            and (key == "mean" or all(v > 0 for v in found))
        ):
            out[key] = [round(v, 6) for v in found]
    # One without the other cannot normalise; the worker would fall back to the data's stats.
    return out if len(out) == 2 else {}


# ---------------------------------------------------------------------- the service
def checkpoint_out(row: Checkpoint) -> CheckpointOut:
    meta = dict(row.meta or {})
    return CheckpointOut(
        id=row.id,
        name=row.name,
        arch=row.arch,
        num_classes=row.num_classes,
        in_channels=int(meta.get("in_channels", 3)),
        width=float(meta.get("width", 1.0)),
        input_size=meta.get("input_size"),
        mean=meta.get("mean"),
        std=meta.get("std"),
        meta=meta,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
    )


def create_checkpoint(
    session: Session,
    *,
    owner: str,
    form: CheckpointForm,
    path: Path,
    filename: str | None,
    artifact_dir: Path,
) -> Checkpoint:
    """Check an uploaded safetensors file (at `path`, beside its final place), move it
    into place, and record it."""
    _check_arch(form.arch)
    contents = read_safetensors(path)
    in_channels, width, network = check_fit(form, contents)
    meta: dict[str, Any] = {
        "in_channels": in_channels,
        "width": width,
        "layout": "network" if network else "backbone",
        "tensors": len(contents.tensors),
        "params": sum(
            math.prod(t.shape)
            for name, t in contents.tensors.items()
            if name not in PREPROCESS_KEYS and not name.endswith("num_batches_tracked")
        ),
        **_normalisation(form, contents, in_channels),
    }
    if form.input_size is not None:
        meta["input_size"] = form.input_size

    checkpoint_id = new_id()
    final = artifact_dir / "checkpoints" / f"{checkpoint_id}.safetensors"
    move_into_place(path, final)
    row = Checkpoint(
        id=checkpoint_id,
        owner=owner,
        name=form.name or display_name(filename),
        arch=form.arch,
        num_classes=form.num_classes,
        meta=meta,
        size_bytes=final.stat().st_size,
        path=f"checkpoints/{checkpoint_id}.safetensors",
        created_at=utcnow(),
    )
    owned.record_with_files(session, row, files=final)
    log.info(
        "checkpoint %s (%s, %d classes) stored for %s",
        checkpoint_id,
        form.arch,
        form.num_classes,
        owner,
    )
    return row


def get_owned(
    session: Session, owner: str, checkpoint_id: str, *, lock: bool = False
) -> Checkpoint:
    return owned.get_owned(
        session, Checkpoint, owner=owner, id_=checkpoint_id, what="checkpoint", lock=lock
    )


def list_checkpoints(
    session: Session, *, owner: str, page_size: int, page_token: str | None
) -> tuple[list[Checkpoint], str | None]:
    return owned.list_owned(
        session, Checkpoint, owner=owner, page_size=page_size, page_token=page_token
    )


def delete_checkpoint(
    session: Session, *, owner: str, checkpoint_id: str, artifact_dir: Path
) -> None:
    owned.delete_unused(
        session,
        Checkpoint,
        owner=owner,
        id_=checkpoint_id,
        what="checkpoint",
        used_as="is the teacher of",
        files=lambda row: artifact_dir / row.path,
    )
