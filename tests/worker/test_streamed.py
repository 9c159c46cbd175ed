"""Training on a dataset by URL (app.core.datasets.streamed): images read by DataLoader
processes give exactly what the same images in memory give, through the fit loop, the
filters, the teacher's cache and two data-parallel ranks; a file that breaks after
registration fails the stage naming it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.datasets import DatasetUnavailableError, InMemoryData
from app.core.datasets.streamed import read_index
from app.core.network import NetworkConfig, build_network
from app.schemas.stage_spec import DatasetRef, StageSpec
from app.services.dataset_urls import scan
from tests.app.test_dataset_urls import digits, image_folder, shards
from worker.control import JobControl
from worker.data import apply_filters, load_dataset
from worker.objectives import supervised
from worker.parallel import fit_in_processes
from worker.rank import FitTask
from worker.teacher_outputs import compute_teacher_outputs
from worker.train import NullSink, fit

CPU = torch.device("cpu")


def registered(
    root: Path, fmt: str = "image_folder", n: int = 400
) -> tuple[InMemoryData, InMemoryData]:
    """The same digits as a dataset by URL (streamed) and in memory, in the index's order."""
    x, y = digits(n)
    folder = image_folder(root, x, y) if fmt == "image_folder" else shards(root, x, y, 128)
    index, _stats = scan(f"file://{folder}", fmt, None)
    path = root.parent / f"{root.name}.index.json"
    index.write(path)
    streamed = read_index(path, "all")
    order = np.argsort(y, kind="stable")
    memory = InMemoryData(
        torch.from_numpy(x[order][:, None]), torch.from_numpy(y[order]), streamed.class_names, 255.0
    )
    return streamed, memory


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig("small_cnn", 10, 1, 8, width=0.25))


def stage(**kw) -> StageSpec:
    return StageSpec(
        dataset=DatasetRef(name="digits"),
        **{"epochs": 2, "batch_size": 32, "min_steps": 0, "augment": "crop", **kw},
    )


def run_fit(data: InMemoryData, spec: StageSpec) -> torch.nn.Module:
    model = net()
    fit(
        stage_name="s",
        model=model,
        train=data,
        stage=spec,
        objective=supervised(),
        device=CPU,
        seed=0,
        control=JobControl(),
        sink=NullSink(),
    )
    return model


@pytest.mark.parametrize("fmt", ["image_folder", "webdataset"])
def test_a_streamed_fit_equals_the_same_fit_in_memory(tmp_path: Path, fmt: str):
    streamed, memory = registered(tmp_path / "set", fmt)
    assert streamed.streamed and not memory.streamed
    assert torch.equal(streamed.x[:], memory.x)
    a, b = run_fit(streamed, stage()), run_fit(memory, stage())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # The DataLoader's reader processes are gone once the stage is done.
    assert multiprocessing.active_children() == []


def test_filters_narrow_a_streamed_set_without_reading_it(tmp_path: Path):
    streamed, memory = registered(tmp_path / "set")
    ref = DatasetRef(
        id="00000000-0000-0000-0000-000000000000",
        classes=[3, 1],
        samples_per_class=5,
        image_size=16,
    )
    a, b = apply_filters(streamed, ref, seed=1), apply_filters(memory, ref, seed=1)
    assert a.streamed and a.class_names == b.class_names == ["digit3", "digit1"]
    assert torch.equal(a.y, b.y) and a.x.shape == b.x.shape == (10, 1, 16, 16)
    # Read at 16 pixels from the files, as serving decodes them; in memory the stored 8-pixel
    # images are resized: the two differ by rounding at most.
    assert (a.x[:].int() - b.x.int()).abs().max() <= 1
    # Indexed like a tensor: a boolean mask reads the samples it picks.
    mask = torch.zeros(len(streamed), dtype=torch.bool)
    mask[[3, 7]] = True
    assert torch.equal(streamed.x[mask], memory.x[mask])
    assert streamed.description.startswith("url/set/")


def test_the_teachers_cache_on_a_streamed_set_equals_the_one_in_memory(tmp_path: Path):
    streamed, memory = registered(tmp_path / "set")
    teacher = net().eval()
    a = compute_teacher_outputs(teacher, streamed, device=CPU)
    b = compute_teacher_outputs(teacher, memory, device=CPU)
    assert torch.equal(a.logits, b.logits)


def test_two_ranks_stream_their_shares(tmp_path: Path):
    streamed, _ = registered(tmp_path / "set", n=300)
    spec = stage(epochs=3, augment="none")
    model = net()
    task = FitTask(
        stage_name="s",
        model=model,
        train=streamed,
        stage=spec,
        objective=supervised(),
        seed=0,
        checkpoints=None,
        eval_fn=None,
        extra_modules=None,
        on_epoch_start=None,
        hooks=[],
    )
    result = fit_in_processes(
        task, processes=2, device=CPU, control=JobControl(), sink=NullSink(), threads=2
    )
    assert result.epochs_run == 3
    assert result.history[-1]["train_accuracy"] > 0.5


def test_a_file_broken_after_registration_fails_the_stage_naming_it(tmp_path: Path):
    streamed, _ = registered(tmp_path / "set", n=100)
    victim = sorted((tmp_path / "set" / "digit4").glob("*.png"))[0]
    victim.write_bytes(b"overwritten")
    with pytest.raises(DatasetUnavailableError, match=victim.name):
        run_fit(streamed, stage())


def test_a_set_that_fits_is_read_into_memory_once_and_a_larger_one_streams(tmp_path: Path):
    _, memory = registered(tmp_path / "set", n=120)
    path = tmp_path / "set.index.json"
    ref = DatasetRef(id="00000000-0000-0000-0000-000000000000", split="all")
    size = 120 * 1 * 8 * 8
    kept = load_dataset(ref, data_root=tmp_path, seed=0, uploaded_path=path, memory_bytes=size)
    assert not kept.streamed and torch.equal(kept.x, memory.x) and torch.equal(kept.y, memory.y)
    over = load_dataset(ref, data_root=tmp_path, seed=0, uploaded_path=path, memory_bytes=size - 1)
    assert over.streamed and len(over) == 120
