"""The artifact store against a real S3-compatible server (moto's server mode): two
"machines" (two artifact directories) that share nothing but the bucket."""

from __future__ import annotations

import io
import secrets
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from app.config import Settings
from app.core.artifacts import ArtifactStore
from tests.conftest import S3_BUCKET
from worker.checkpoints import CheckpointStore


@pytest.fixture
def machines(tmp_path: Path, s3_endpoint: str) -> tuple[ArtifactStore, ArtifactStore]:
    """Two artifact directories behind one fresh prefix of the bucket."""
    url = f"s3://{S3_BUCKET}/{secrets.token_hex(4)}"
    return (
        ArtifactStore(tmp_path / "a", url, s3_endpoint),
        ArtifactStore(tmp_path / "b", url, s3_endpoint),
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_pushed_folder_is_pulled_whole_on_another_machine(machines):
    a, b = machines
    write(a.root / "models" / "m1" / "model.json", "{}")
    write(a.root / "models" / "m1" / "sub" / "weights.bin", "w" * 1000)
    a.push(a.root / "models" / "m1")
    here = b.root / "models" / "m1"
    assert not here.exists()
    assert b.pull(here)
    assert (here / "model.json").read_text() == "{}"
    assert (here / "sub" / "weights.bin").read_text() == "w" * 1000
    # Nothing half-fetched is left beside it.
    assert [p.name for p in here.parent.iterdir()] == ["m1"]


def test_files_pull_too_and_a_missing_artifact_says_so(machines):
    a, b = machines
    a.push(write(a.root / "datasets" / "d1.npz", "data"))
    assert b.pull(b.root / "datasets" / "d1.npz")
    assert (b.root / "datasets" / "d1.npz").read_text() == "data"
    assert b.pull(b.root / "datasets" / "missing.npz") is False
    assert b.pull(b.root / "models" / "missing") is False


def test_remove_deletes_both_copies(machines):
    a, b = machines
    folder = a.root / "jobs" / "j1"
    write(folder / "checkpoints" / "train.fit.pt", "x")
    a.push(folder)
    a.remove(folder)
    assert not folder.exists()
    assert b.pull(b.root / "jobs" / "j1") is False


def test_refresh_replaces_a_stale_local_copy(machines):
    a, b = machines
    folder = a.root / "jobs" / "j2" / "checkpoints"
    a.push(write(folder / "train.fit.pt", "epoch 1"))
    b.refresh(b.root / "jobs" / "j2" / "checkpoints")
    # Machine b moves the job on; machine a, which ran it before, catches up.
    b_file = b.root / "jobs" / "j2" / "checkpoints" / "train.fit.pt"
    b.push(write(b_file, "epoch 5"))
    a.refresh(folder)
    assert (folder / "train.fit.pt").read_text() == "epoch 5"


def test_concurrent_pulls_of_one_model_all_see_it_whole(machines):
    a, b = machines
    for i in range(5):
        write(a.root / "models" / "m2" / f"f{i}", str(i) * 100)
    a.push(a.root / "models" / "m2")
    results: list[bool] = []

    def pull() -> None:
        results.append(b.pull(b.root / "models" / "m2"))

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    assert sorted(p.name for p in (b.root / "models" / "m2").iterdir()) == [
        f"f{i}" for i in range(5)
    ]
    assert [p.name for p in (b.root / "models").iterdir()] == ["m2"]


def test_a_job_resumes_on_another_machine_from_the_stores_checkpoint(machines):
    a, b = machines
    jobs_a = CheckpointStore(a.root / "jobs" / "j3" / "checkpoints", a)
    jobs_a.save_fit("train", {"epoch": 3, "w": torch.ones(2)})
    b.refresh(b.root / "jobs" / "j3" / "checkpoints")
    jobs_b = CheckpointStore(b.root / "jobs" / "j3" / "checkpoints", b)
    state = jobs_b.load_fit("train")
    assert state is not None and state["epoch"] == 3
    # A finished stage replaces its fit state in the store too.
    jobs_b.save_done("train", torch.nn.Linear(2, 2), {"seconds": 1.0})
    a.refresh(a.root / "jobs" / "j3" / "checkpoints")
    assert jobs_a.load_fit("train") is None
    assert jobs_a.load_done("train") is not None


def test_a_local_store_only_touches_the_directory(tmp_path: Path):
    store = ArtifactStore(tmp_path, None)
    assert not store.shared
    path = write(tmp_path / "models" / "m" / "model.json", "{}")
    store.push(path)  # nothing to do
    assert store.pull(path) and not store.pull(tmp_path / "nothing")
    store.remove(path.parent)
    assert not path.parent.exists()


def test_artifact_url_settings(tmp_path: Path):
    s = Settings(artifact_url=f"file://{tmp_path}/shared")
    assert s.artifact_dir == tmp_path / "shared" and s.artifact_url is None
    assert Settings(artifact_url="s3://bucket/prefix").artifact_url == "s3://bucket/prefix"
    with pytest.raises(ValueError, match="STILLHOUSE_ARTIFACT_URL='ftp://x'"):
        Settings(artifact_url="ftp://x")


# The store's failure does not depend on the database: one backend.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_upload_the_store_does_not_take_is_a_503_and_leaves_nothing(
    client, alice, env, monkeypatch
):
    from app.config import get_settings
    from tests.helpers import free_port

    # A store nothing listens at.
    monkeypatch.setenv("STILLHOUSE_ARTIFACT_URL", f"s3://{S3_BUCKET}/away")
    monkeypatch.setenv("STILLHOUSE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    r = client.post("/api/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, headers=alice)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert f"s3://{S3_BUCKET}/away" in r.json()["detail"]
    assert client.get("/api/v1/datasets", headers=alice).json()["datasets"] == []
    stored = Path(env["STILLHOUSE_ARTIFACT_DIR"]) / "datasets"
    assert not stored.exists() or list(stored.iterdir()) == []
