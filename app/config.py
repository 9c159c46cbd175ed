"""Settings shared by the API, the worker and the command-line client.

One `Settings` singleton, read from the environment (prefix `STILLHOUSE_`) or `.env`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A dataset may take this many times STILLHOUSE_MAX_UPLOAD_BYTES once decoded.
DATASET_EXPANSION = 4
# `stillhouse api` runs one serving process per core up to this many, unless told.
MAX_DEFAULT_API_WORKERS = 8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STILLHOUSE_", env_file=".env", extra="ignore")

    # --- store ---
    database_url: str = "sqlite:///./stillhouse.db"
    artifact_dir: Path = Path("./artifacts")
    # Where artifacts live when machines share no disk: s3://bucket/prefix (the artifact
    # dir is then this process's working copy), or file:///path (the artifact dir itself).
    # See app/core/artifacts.py and docs/deploy.md.
    artifact_url: str | None = None
    # An S3-compatible server (MinIO, Ceph, moto) instead of AWS's.
    s3_endpoint_url: str | None = None
    # Where datasets may be registered by URL (POST /api/v1/datasets with a JSON body),
    # comma-separated URL prefixes such as "file:///data,s3://datasets/". Empty: none.
    # Without it, any API key could read any file the API's machine can.
    dataset_url_roots: str = ""
    # Larger uploads answer 413 (bytes).
    max_upload_bytes: int = 1024**3
    # Larger JSON bodies on /api/v1/jobs (job specs) answer 413 (bytes).
    max_spec_bytes: int = 1024**2

    # --- queue and worker ---
    # How often a running job's worker writes its heartbeat (seconds).
    heartbeat_seconds: float = 10.0
    # A RUNNING job whose heartbeat is older than this goes back to the queue (seconds).
    stale_after_seconds: float = 60.0
    # How often an idle worker looks for a queued job (seconds); bounds submit -> RUNNING latency.
    poll_seconds: float = 0.2
    # How often a running job checks whether it was cancelled (seconds).
    cancel_poll_seconds: float = 1.0
    # How often progress events are written at most (seconds); events are batched, not per step.
    progress_interval_seconds: float = 1.0
    # Attempts before a job whose worker keeps dying is FAILED.
    max_attempts: int = 3
    # Training device for the worker: auto picks cuda when present.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for torch in the worker; 0 means one per core of this machine.
    threads: int = 0
    # A Ray cluster (`ray://head:10001`, or `head:6379` on one of its machines) that runs
    # the data-parallel stages this worker cannot run by itself (worker/ray_train.py;
    # pip install 'stillhouse[ray]'). Unset: every stage trains on this machine.
    ray_address: str | None = None
    # Data-parallel processes this worker runs on its own machine at most before it hands
    # a stage to the Ray cluster; 0 means one per GPU on a GPU worker, one per core on a
    # CPU worker. Without ray_address, no limit: every stage trains here.
    local_processes: int = Field(0, ge=0)
    # Where torchvision datasets (`torchvision:<Name>`) are read from.
    data_root: Path = Path("./data")
    # Where pretrained torchvision weights are looked up (the torch hub cache, TORCH_HOME).
    torch_home: Path | None = None

    # --- serving ---
    # Device that serves predictions; the worker measures report latency on it too.
    serving_device: Literal["cpu", "cuda"] = "cpu"
    # Backend for serving: auto takes the faster one measured at export (torch or onnx),
    # or the int8 graph where the job asked for int8 and the worker judged it servable;
    # onnx_int8 takes the int8 graph wherever there is one (docs/serving.md).
    serving_backend: Literal["auto", "torch", "onnx", "onnx_int8"] = "auto"
    # Dynamic batching: largest batch gathered, and the longest a request waits for mates (ms).
    batch_max_size: int = 32
    batch_max_wait_ms: float = 2.0
    # A batch whose forward pass is expected to take at most this long runs on the event
    # loop instead of a thread (0 = always a thread); see app/serving/batcher.py.
    batch_inline_max_ms: float = Field(0.5, ge=0)
    # Model cache bounds: loaded models kept in memory.
    cache_max_models: int = 16
    cache_max_bytes: int = 2 * 1024**3
    # Prediction limits: inputs per request and pixels per image.
    predict_max_batch: int = 256
    predict_max_pixels: int = 4096 * 4096
    # On Postgres, idle workers LISTEN for newly queued jobs and claim them at once
    # (worker/wakeup.py); polling every `poll_seconds` goes on beside it.
    job_notify: bool = True
    # This worker's labels, comma-separated (e.g. "a100,eu-west"): shown at
    # GET /api/v1/workers.
    worker_labels: str = ""
    # Serving processes of `stillhouse api` on one port (0 = one per core, at most
    # MAX_DEFAULT_API_WORKERS): each has its own event loop, model cache and batchers.
    api_workers: int = Field(0, ge=0)
    # Intra-op threads of one forward pass in an API process (torch and ONNX Runtime);
    # 0 means half the cores divided among the API processes (at least 1), leaving the
    # rest to the event loops.
    serving_threads: int = 0
    # How long a prediction route remembers that a key may use a model (seconds; 0 = ask
    # the database every time): a key revoked through another API process keeps
    # predicting at most this long (a deleted model stops at once). See
    # app/serving/lookup.py.
    serving_lookup_ttl_seconds: float = 5.0

    # --- client ---
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    log_level: str = "INFO"

    @property
    def max_dataset_bytes(self) -> int:
        """Bytes a dataset may take decoded, in memory: the guard against zip bombs and
        compressed arrays that expand without bound, and against specs (10M synthetic
        images at 224 pixels) that would take a worker down."""
        return DATASET_EXPANSION * self.max_upload_bytes

    @model_validator(mode="after")
    def _empty_means_unset(self) -> Settings:
        # Compose passes `${STILLHOUSE_RAY_ADDRESS:-}` as an empty string.
        if not self.ray_address:
            self.ray_address = None
        return self

    @model_validator(mode="after")
    def _artifact_url(self) -> Settings:
        url = self.artifact_url
        if url is None or url == "":
            self.artifact_url = None
        elif url.startswith("file://"):
            # file:///srv/artifacts is the directory itself (on a shared file system, say).
            self.artifact_dir = Path(url.removeprefix("file://"))
            self.artifact_url = None
        elif not url.startswith("s3://") or len(url) <= len("s3://"):
            raise ValueError(
                f"STILLHOUSE_ARTIFACT_URL={url!r}: expected file:///path or s3://bucket/prefix"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def dataset_roots(self) -> list[str]:
        """`dataset_url_roots` as a list, each without a trailing slash."""
        return [p.strip().rstrip("/") for p in self.dataset_url_roots.split(",") if p.strip()]

    def labels(self) -> list[str]:
        """`worker_labels` as a sorted list without blanks or repeats."""
        return sorted({part.strip() for part in self.worker_labels.split(",") if part.strip()})

    def api_processes(self) -> int:
        """Serving processes `stillhouse api` runs: the setting, or one per core up to
        MAX_DEFAULT_API_WORKERS (each process holds torch and its own model cache: about
        1 GiB resident before any model, measured; a 64-core machine would not want 64
        of them unasked)."""
        if self.api_workers > 0:
            return self.api_workers
        return max(1, min(usable_cores(), MAX_DEFAULT_API_WORKERS))

    def torch_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset
    narrows), not the machine's count. A CPU quota (`docker run --cpus`) is not seen
    here: set STILLHOUSE_API_WORKERS there."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
