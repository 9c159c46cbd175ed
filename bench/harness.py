"""Run job specs through Stillhouse's real path (validation, queue, worker) in-process,
on a throwaway SQLite database, for the benchmarks."""

from __future__ import annotations

import atexit
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("bench")

# The owner of every job and upload the benchmarks make.
OWNER = "bench"


class Harness:
    def __init__(self, root: Path | None = None, threads: int | None = None) -> None:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="stillhouse-bench-"))
            # A throwaway store: gone when the benchmark process ends.
            atexit.register(shutil.rmtree, root, ignore_errors=True)
        self.root = root
        os.environ["STILLHOUSE_DATABASE_URL"] = f"sqlite:///{self.root / 'bench.db'}"
        os.environ["STILLHOUSE_ARTIFACT_DIR"] = str(self.root / "artifacts")
        os.environ.setdefault("STILLHOUSE_DATA_ROOT", str(Path("data").resolve()))
        if threads is not None:
            os.environ["STILLHOUSE_THREADS"] = str(threads)
        from app.config import get_settings
        from app.db import reset_engines
        from app.migrate import upgrade_head

        get_settings.cache_clear()
        reset_engines()
        upgrade_head()

    def run(self, spec: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
        """Submit `spec`, run it to the end, return the finished job as a dict."""
        from app.config import get_settings
        from app.db import get_sessionmaker, get_write_sessionmaker
        from app.models import Job
        from app.schemas.job_spec import parse_spec
        from app.services.jobs import create_job
        from worker.main import Worker

        with get_write_sessionmaker()() as session:
            job, _ = create_job(
                session,
                owner=OWNER,
                spec=parse_spec(spec),
                raw_body=spec,
                idempotency_key=None,
                default_max_attempts=1,
            )
            job_id = job.id
        started = time.perf_counter()
        Worker(get_settings(), device=device).run(max_jobs=1)
        seconds = time.perf_counter() - started
        with get_sessionmaker()() as session:
            row = session.get(Job, job_id)
            assert row is not None
            if row.state != "SUCCEEDED":
                raise RuntimeError(f"bench job {spec.get('name')} {row.state}: {row.error}")
            return {
                "id": row.id,
                "metrics": row.metrics,
                "report": row.report,
                "model_id": row.model_id,
                "seconds": round(seconds, 2),
            }

    def metrics(self, job_id: str, stage: str) -> list[dict[str, Any]]:
        """The per-epoch figures one stage of a finished job wrote, in order (what
        GET /api/v1/jobs/{id}/metrics gives, by stage)."""
        from app.db import get_sessionmaker
        from app.services.jobs import metric_history

        with get_sessionmaker()() as session:
            return metric_history(session, owner=OWNER, job_id=job_id).stages.get(stage, [])

    def upload(self, name: str, x: Any, y: Any | None, class_names: list[str]) -> str:
        """Store arrays as an uploaded .npz dataset, through the same code as
        POST /api/v1/datasets; its id."""
        import numpy as np

        from app.config import get_settings
        from app.db import get_write_sessionmaker
        from app.schemas.dataset import DatasetForm
        from app.services.datasets import create_dataset

        path = self.root / f"{name}.npz"
        arrays = {"x": np.asarray(x)}
        if y is not None:
            arrays["y"] = np.asarray(y)
            arrays["class_names"] = np.asarray(class_names)
        np.savez(path, **arrays)
        settings = get_settings()
        with get_write_sessionmaker()() as session:
            row = create_dataset(
                session,
                owner=OWNER,
                form=DatasetForm(name=name),
                path=path,
                filename=path.name,
                artifact_dir=settings.artifact_dir,
                max_decoded_bytes=settings.max_dataset_bytes,
            )
            return row.id


def machine() -> dict[str, Any]:
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def mean_std(values: list[float], digits: int = 4) -> dict[str, float]:
    """A figure over seeds as the benchmarks report it: mean and sample std (0 for one)."""
    return {
        "mean": round(statistics.mean(values), digits),
        "std": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0,
    }
