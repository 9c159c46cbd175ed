"""Finished models for the serving tests, made once per session and installed per test.

Training a student takes a second or two and every test runs on two databases, so the
real pipeline (a `train` job run by the real worker) makes one student per session, and
`install_model` copies its artifacts under a fresh id into the test's artifact dir and
registers it in the test's database, as the worker does.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.config import get_settings
from app.core.network import NetworkConfig, build_network
from app.db import get_write_sessionmaker, reset_engines
from app.migrate import upgrade_head
from app.models import TrainedModel
from app.models.base import utcnow
from tests.helpers import tiny_train_spec
from worker.export import export_model

TINY_SPEC = tiny_train_spec(name="tiny-digits")


def train_student(root: Path) -> Path:
    """Run one real train job against a throwaway SQLite store; returns the model folder."""
    keys = ("STILLHOUSE_DATABASE_URL", "STILLHOUSE_ARTIFACT_DIR", "STILLHOUSE_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        {
            "STILLHOUSE_DATABASE_URL": f"sqlite:///{root / 'train.db'}",
            "STILLHOUSE_ARTIFACT_DIR": str(root / "artifacts"),
            "STILLHOUSE_THREADS": "1",
        }
    )
    get_settings.cache_clear()
    reset_engines()
    try:
        upgrade_head(os.environ["STILLHOUSE_DATABASE_URL"])
        from fastapi.testclient import TestClient

        from app.main import app
        from app.services.keys import create_key
        from worker.main import Worker

        with get_write_sessionmaker()() as session:
            key = create_key(session, owner="factory")
        with TestClient(app) as client:
            r = client.post(
                "/api/v1/jobs", json=TINY_SPEC, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 201, r.text
            Worker(get_settings(), device="cpu").run(max_jobs=1)
            job = client.get(
                f"/api/v1/jobs/{r.json()['id']}", headers={"Authorization": f"Bearer {key}"}
            ).json()
        assert job["state"] == "SUCCEEDED", job
        return root / "artifacts" / "models" / job["model_id"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        reset_engines()


def export_random(
    folder: Path,
    *,
    in_channels: int,
    image_size: int,
    scale: float,
    classes: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """A small_cnn with random weights, exported as a job would (for shapes, not skill)."""
    import torch

    torch.manual_seed(seed)
    config = NetworkConfig(
        arch="small_cnn",
        num_classes=len(classes),
        in_channels=in_channels,
        image_size=image_size,
        width=0.25,
        scale=scale,
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
    )
    net = build_network(config).eval()
    exported = export_model(
        net,
        config,
        model_id=folder.name,
        folder=folder,
        class_names=classes,
        metrics={"accuracy": 0.0},
        job_id=None,
        name="random",
    )
    return exported.meta


@pytest.fixture(scope="session")
def student_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real student: small_cnn trained on digits 0-2 (1 x 8 x 8, scale 1.0)."""
    return train_student(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3 x 16 x 16 small_cnn on the 0-255 scale with four classes."""
    folder = tmp_path_factory.mktemp("colour") / "template"
    export_random(folder, in_channels=3, image_size=16, scale=255.0, classes=list("abcd"))
    return folder


def install_model(template: Path, *, owner: str, name: str | None = None) -> str:
    """Copy a model folder under a new id into the current settings' store; returns the id."""
    settings = get_settings()
    model_id = str(uuid.uuid4())
    folder = settings.artifact_dir / "models" / model_id
    shutil.copytree(template, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["id"] = model_id
    (folder / "model.json").write_text(json.dumps(meta))
    with get_write_sessionmaker()() as session:
        session.add(
            TrainedModel(
                id=model_id,
                owner=owner,
                name=name or meta.get("name"),
                job_id=meta.get("job_id"),
                arch=meta["arch"],
                meta=meta,
                params=meta["params"],
                size_bytes=meta["size_bytes"],
                artifact_path=str(folder.relative_to(settings.artifact_dir)),
                created_at=utcnow(),
            )
        )
        session.commit()
    return model_id
