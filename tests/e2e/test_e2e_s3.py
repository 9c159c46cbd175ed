"""An API and workers that share no disk: each has its own artifact directory, and the
only store they share is a real S3-compatible server (moto's server mode) on a loopback
port. Uploads, checkpoints, models and deletes all go through it, and a job trained by
2 data-parallel processes hops machines through it. Postgres only (neither depends on
the database)."""

from __future__ import annotations

import io
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import S3_BUCKET, S3_TEST_ENV
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.test_e2e_jobs import alive, children_of, metric_epochs, pid_of
from tests.helpers import long_train_spec, wait_for


@pytest.fixture(scope="module")
def e2e_stack(
    postgres_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e-s3")
    env = {
        "STILLHOUSE_ARTIFACT_URL": f"s3://{S3_BUCKET}/e2e-{secrets.token_hex(3)}",
        "STILLHOUSE_S3_ENDPOINT_URL": s3_endpoint,
        **S3_TEST_ENV,
    }
    with running_stack(
        postgres_url,
        root,
        env=env,
        api_env={"STILLHOUSE_ARTIFACT_DIR": str(root / "api-machine")},
        worker_env=lambda i: {"STILLHOUSE_ARTIFACT_DIR": str(root / f"worker-machine-{i}")},
    ) as stack:
        yield stack


def machine_dir(stack: Stack, name: str) -> Path:
    return stack.root / name


def store_keys(stack: Stack, s3_endpoint: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_endpoint},
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    base = stack.env["STILLHOUSE_ARTIFACT_URL"].removeprefix("s3://")
    return [k.removeprefix(base + "/") for k in fs.find(base)]


def upload_digits(stack: Stack) -> str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:400] * 16).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=digits.target[:400], class_names=np.array([str(i) for i in range(10)]))
    r = stack.client().post(
        "/api/v1/datasets",
        files={"file": ("digits400.npz", buf.getvalue(), "application/octet-stream")},
        data={"name": "digits-400"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_upload_train_serve_and_delete_through_the_object_store(stack: Stack, s3_endpoint: str):
    dataset_id = upload_digits(stack)
    keys = store_keys(stack, s3_endpoint)
    assert any(k.startswith("datasets/") for k in keys), keys
    spec = {
        "kind": "train",
        "name": "from-s3",
        "model": {"arch": "small_cnn", "width": 0.25},
        "train": {"dataset": {"id": dataset_id}, "epochs": 2, "min_steps": 0},
    }
    job = stack.submit(spec)
    done = stack.wait_state(job["id"], "SUCCEEDED", "FAILED", "CANCELLED", timeout=120)
    assert done["state"] == "SUCCEEDED", done
    model_id = done["model_id"]
    assert any(k.startswith(f"models/{model_id}/") for k in store_keys(stack, s3_endpoint))
    # The worker read the upload from the store; the API has never held the model.
    api_models = machine_dir(stack, "api-machine") / "models" / model_id
    assert not api_models.exists()

    r = stack.client().post(
        f"/api/v1/models/{model_id}/predict", json={"inputs": [[[0.0] * 8] * 8]}
    )
    assert r.status_code == 200, r.text
    assert api_models.is_dir(), "the API fetched the model from the store to serve it"
    onnx = stack.client().get(f"/api/v1/models/{model_id}/artifacts/model.onnx")
    assert onnx.status_code == 200 and len(onnx.content) > 1000

    assert stack.client().delete(f"/api/v1/models/{model_id}").status_code == 204
    assert not any(k.startswith(f"models/{model_id}/") for k in store_keys(stack, s3_endpoint))
    assert not api_models.exists()
    assert stack.client().delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    assert not any(k.startswith("datasets/") for k in store_keys(stack, s3_endpoint))


def ranks_of(pid: int) -> list[int]:
    """A worker's data-parallel rank processes (multiprocessing's resource tracker is a
    child too, and is not one)."""
    ranks = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            ranks.append(child)
    return ranks


def test_a_two_process_job_killed_on_one_machine_resumes_on_another(stack: Stack, s3_endpoint: str):
    """2 gloo ranks train the job; SIGKILL to their worker takes them along; a worker on
    a machine that never saw the job resumes it from the store's checkpoint, with 2
    ranks again; a cancel stops every rank at once."""
    (first,) = stack.workers(1, exactly=True)
    spec = long_train_spec(200, name="hops-machines")
    spec["resources"] = {"processes": 2}
    job = stack.submit(spec)
    checkpoint_key = f"jobs/{job['id']}/checkpoints/train.fit.pt"

    def two_epochs_in_the_store() -> bool:
        epochs = metric_epochs(stack.events_so_far(job["id"]))
        return len(epochs) >= 2 and checkpoint_key in store_keys(stack, s3_endpoint)

    wait_for("two epochs checkpointed in the store", two_epochs_in_the_store, 120, stack.logs())
    ranks = ranks_of(first.pid)
    assert len(ranks) == 2, (ranks, first.tail())
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    wait_for("the ranks to die with their worker", lambda: not any(map(alive, ranks)), 10)
    before = metric_epochs(stack.events_so_far(job["id"]))

    # A worker on a machine that never saw the job: an empty artifact directory.
    elsewhere = machine_dir(stack, "worker-machine-new")
    sweeper = stack.start_worker(
        pool=False, STILLHOUSE_STALE_AFTER_SECONDS="3", STILLHOUSE_ARTIFACT_DIR=str(elsewhere)
    )
    stack.wait_ready(sweeper)

    def resumed() -> list[int]:
        events = stack.events_so_far(job["id"])
        second = [e for e in events if e.data.get("state") == "RUNNING"][1:]
        return metric_epochs([e for e in events if second and e.id > second[0].id])

    wait_for("an epoch on the other machine", lambda: resumed(), 120, stack.logs())
    running = [e for e in stack.events_so_far(job["id"]) if e.data.get("state") == "RUNNING"]
    assert pid_of(running[1].data["worker"]) == sweeper.pid
    # It went on from the store's last checkpoint, not from epoch 1.
    assert 2 <= resumed()[0] <= max(before) + 1
    assert (elsewhere / "jobs" / job["id"] / "checkpoints").is_dir()
    new_ranks = ranks_of(sweeper.pid)
    assert len(new_ranks) == 2

    asked = time.monotonic()
    assert stack.client().post(f"/api/v1/jobs/{job['id']}:cancel").status_code == 202
    done = stack.wait_state(job["id"], "CANCELLED", "FAILED", "SUCCEEDED", timeout=20)
    assert done["state"] == "CANCELLED", done
    assert time.monotonic() - asked < 8, "every rank stops within a few steps"
    wait_for("the new ranks to end", lambda: not any(map(alive, new_ranks)), 10)
    assert sweeper.alive()
