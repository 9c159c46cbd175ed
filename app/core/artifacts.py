"""The artifact store: every process's artifact directory, and the object store behind it
when machines share no disk.

With `STILLHOUSE_ARTIFACT_URL` unset or `file://...` the directory is the store, as on one
machine (or on a shared file system), and everything here is a no-op. With
`s3://bucket/prefix` (through fsspec and s3fs; `STILLHOUSE_S3_ENDPOINT_URL` for an
S3-compatible server) the object store holds the truth and each process's
`STILLHOUSE_ARTIFACT_DIR` is its working copy:

- whoever writes an artifact (an upload, a checkpoint, a model, a job's checkpoints)
  writes it to its directory as before, then `push`es it;
- whoever reads one calls `pull` first, which fetches it when it is not there yet (a model
  the API serves for the first time, a dataset a worker trains on); a job's checkpoints
  are `refresh`ed instead when the job starts, since another machine may have moved them
  on since this one last ran it;
- deleting removes both copies (`remove`).

The same relative path names an artifact in both places: `models/<id>/model.onnx` is
`s3://bucket/prefix/models/<id>/model.onnx`. Downloads land under a temporary name
and are renamed into place, so a reader never sees half an artifact.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.core.files import remove_path

log = logging.getLogger(__name__)


class ArtifactStoreError(RuntimeError):
    """The object store cannot be used as configured (a missing package), or did not
    answer; the message names the store and the artifact."""


class ArtifactStore:
    def __init__(self, root: Path, url: str | None = None, endpoint_url: str | None = None):
        self.root = root
        self.url = url if url and not url.startswith("file://") else None
        self.endpoint_url = endpoint_url
        self._fs: Any = None
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether an object store stands behind the directory."""
        return self.url is not None

    def __getstate__(self) -> dict[str, Any]:
        # A data-parallel rank gets the settings and opens its own connection.
        return {"root": self.root, "url": self.url, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["url"], state["endpoint_url"])  # type: ignore[misc]

    # -- the object store
    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None:
                self._fs = self._open()
            return self._fs

    def _open(self) -> Any:
        assert self.url is not None
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec comes with the base install
            raise ArtifactStoreError("STILLHOUSE_ARTIFACT_URL needs fsspec") from exc
        try:
            options = fsspec_options(self.url, self.endpoint_url)
        except ImportError as exc:
            raise ArtifactStoreError(f"STILLHOUSE_ARTIFACT_URL={self.url}: {exc}") from exc
        fs, _ = fsspec.core.url_to_fs(self.url, **options)
        return fs

    def key(self, path: Path) -> str:
        """The object key of a path under the artifact directory."""
        assert self.url is not None
        rel = path.resolve().relative_to(self.root.resolve()).as_posix()
        base = self.url.split("://", 1)[1].rstrip("/")
        return f"{base}/{rel}"

    @contextmanager
    def _remote(self, what: str, path: Path) -> Iterator[None]:
        try:
            yield
        except ArtifactStoreError:
            raise
        except Exception as exc:
            raise ArtifactStoreError(
                f"the artifact store {self.url} failed to {what} {self.key(path)}: {exc}"
            ) from exc

    # -- what the API and the workers call
    def push(self, path: Path) -> None:
        """Upload a file, or every file of a folder, written under the directory."""
        if not self.shared:
            return
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        with self._remote("store", path):
            for f in files:
                self.fs.put_file(str(f), self.key(f))

    def pull(self, path: Path) -> bool:
        """Make sure `path` (a file or a folder) is in the directory, fetching it from the
        store when it is not; whether it exists."""
        if path.exists():
            return True
        if not self.shared:
            return False
        with self._remote("fetch", path):
            return self._fetch(path)

    def _fetch(self, path: Path) -> bool:
        key = self.key(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.fs.isfile(key):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            self.fs.get_file(key, tmp)
            os.replace(tmp, path)
        else:
            files = self.fs.find(key)
            if not files:
                return False
            tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
            for f in files:
                target = tmp_dir / Path(f).relative_to(key)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f, str(target))
            try:
                tmp_dir.rename(path)
            except OSError:
                # Another thread or process fetched it first: keep theirs.
                remove_path(tmp_dir)
                if not path.exists():
                    raise
        log.info("fetched %s from the artifact store", path)
        return True

    def refresh(self, path: Path) -> None:
        """Replace the local copy of a folder by the store's (a job's checkpoints, which
        another machine may have moved on since this one last had them)."""
        if not self.shared:
            return
        remove_path(path)
        self.pull(path)

    def remove(self, path: Path) -> None:
        """Delete a file or folder here and in the store."""
        remove_path(path)
        if self.shared:
            key = self.key(path)
            with self._remote("delete", path):
                if self.fs.exists(key):
                    self.fs.rm(key, recursive=True)


@lru_cache(maxsize=8)
def fsspec_options(url: str, endpoint_url: str | None) -> dict[str, Any]:
    """How this service opens `url` with fsspec (the artifact store, datasets by URL);
    ImportError says which extra an s3:// URL needs."""
    if not url.startswith("s3://"):
        return {}
    try:
        import s3fs  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{url} needs s3fs: pip install 'stillhouse[s3]'") from exc
    # Another machine changes the store at any time: no cached listings. A store that
    # does not answer fails the request in seconds, not minutes of retries.
    options: dict[str, Any] = {
        "use_listings_cache": False,
        "skip_instance_cache": True,
        "config_kwargs": {
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"max_attempts": 3, "mode": "standard"},
        },
    }
    if endpoint_url:
        options["client_kwargs"] = {"endpoint_url": endpoint_url}
    return options


def _store(root: str, url: str | None, endpoint_url: str | None) -> ArtifactStore:
    return ArtifactStore(Path(root), url, endpoint_url)


def artifact_store(root: Path | None = None) -> ArtifactStore:
    """The store for `root` (default: the settings' artifact directory) as the settings
    configure it; one per process and root."""
    from app.config import get_settings

    settings = get_settings()
    return _store(
        str(root or settings.artifact_dir), settings.artifact_url, settings.s3_endpoint_url
    )


@contextmanager
def available(error: type[Exception]) -> Iterator[None]:
    """Re-raise the store's failures as `error` (the API's 503)."""
    try:
        yield
    except ArtifactStoreError as exc:
        raise error(str(exc)) from exc
