"""The model server of one API process: the cache of loaded students and their batchers.

Created by the app's lifespan (`app.state.model_server`) and closed with it. Routes ask
it for a loaded model (`model`, loading in a thread on a miss) and for logits (`logits`,
through the model's batcher); a deleted model is dropped with `forget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from app.config import Settings, get_settings, usable_cores
from app.core.devices import serving_device
from app.core.model_format import StoredModel
from app.serving.access import authorized_ref
from app.serving.backends import LoadedModel, load_model, serving_threads
from app.serving.batcher import Batcher, BatcherClosedError
from app.serving.cache import ModelCache
from app.serving.lookup import LookupCache
from app.serving.metrics import BATCH_SIZE, FORWARD_LATENCY, forget_model

log = logging.getLogger(__name__)


_gc_frozen = False


class ModelServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = serving_device(settings.serving_device)
        # `stillhouse api` exports its process count; an app run another way (uvicorn by
        # hand, tests) is one process.
        self.threads = serving_threads(settings.serving_threads, settings.api_workers or 1)
        # torch's intra-op pool is process-wide; the API process does nothing else with it.
        torch.set_num_threads(self.threads)
        self.cache: ModelCache[LoadedModel] = ModelCache(
            max_models=settings.cache_max_models,
            max_bytes=settings.cache_max_bytes,
            sizeof=lambda m: m.size_bytes,
            on_evict=self._on_evict,
        )
        # Forward passes of different models may overlap; one model runs one batch at a
        # time. Enough workers to keep every core busy with `threads`-wide passes.
        workers = min(8, max(1, usable_cores() // self.threads))
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
        self.lookups = LookupCache(settings.serving_lookup_ttl_seconds)
        # Per model id: the loaded model a batcher runs, and the batcher.
        self._batchers: dict[str, tuple[LoadedModel, Batcher]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        log.info(
            "model server: %s, backend %s, %d intra-op threads, batches of up to %d "
            "waiting at most %.1f ms, cache of %d models / %d bytes",
            self.device,
            settings.serving_backend,
            self.threads,
            settings.batch_max_size,
            settings.batch_max_wait_ms,
            settings.cache_max_models,
            settings.cache_max_bytes,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Everything imported so far (torch, FastAPI, ...) lives as long as the process.
        # Freezing it keeps the garbage collector's full passes from walking those
        # millions of objects: unfrozen, such a pass stalled every request in flight for
        # hundreds of milliseconds under load.
        global _gc_frozen
        if not _gc_frozen:  # once per process: a full collection is not free either
            _gc_frozen = True
            gc.collect()
            gc.freeze()

    async def close(self) -> None:
        batchers = [b for _, b in self._batchers.values()]
        self._batchers.clear()
        await asyncio.gather(*(b.close() for b in batchers), return_exceptions=True)
        self.cache.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- models
    async def authorize(self, authorization: str, model_id: str, artifact_dir: Path) -> StoredModel:
        """The model `authorization`'s owner may predict with (app/serving/access.py);
        UnauthorizedError or NotFoundError otherwise."""
        _, ref = await authorized_ref(
            self.lookups,
            authorization,
            model_id=model_id,
            artifact_dir=artifact_dir,
            on_deleted=self.forget,
        )
        return ref

    def _load(self, ref: StoredModel) -> LoadedModel:
        return load_model(
            ref, setting=self.settings.serving_backend, device=self.device, threads=self.threads
        )

    async def model(self, ref: StoredModel) -> LoadedModel:
        """The loaded model, loading it (in a thread) on a miss; ModelUnavailableError if
        its artifacts cannot be read."""
        loaded = self.cache.get(ref.id)
        if loaded is not None:
            return loaded
        return await run_in_threadpool(self.cache.get_or_load, ref.id, lambda: self._load(ref))

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self.cache

    def forget(self, model_id: str) -> None:
        """A deleted model: out of memory, and its metric series gone."""
        self.lookups.forget_model(model_id)
        self.cache.evict(model_id)
        entry = self._batchers.pop(model_id, None)
        if entry is not None:
            entry[1].close_soon()
        forget_model(model_id)

    def _on_evict(self, model_id: str, model: LoadedModel) -> None:
        # Called from any thread; batchers belong to the event loop.
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._drop_batcher, model_id, model)

    def _drop_batcher(self, model_id: str, model: LoadedModel) -> None:
        entry = self._batchers.get(model_id)
        if entry is not None and entry[0] is model:
            del self._batchers[model_id]
            # Requests already queued on it are still answered; it then ends.
            entry[1].close_soon()

    # -- predictions
    def _batcher(self, model: LoadedModel) -> Batcher:
        entry = self._batchers.get(model.id)
        if entry is not None:
            if entry[0] is model and not entry[1].closed:
                return entry[1]
            # The model was reloaded since: the old batcher finishes its queue and ends.
            entry[1].close_soon()
        backend = model.backend
        forward = FORWARD_LATENCY.labels(model.id, backend.name)
        sizes = BATCH_SIZE.labels(model.id)

        def on_batch(rows: int, seconds: float) -> None:
            sizes.observe(rows)
            forward.observe(seconds)

        batcher = Batcher(
            backend.run,
            max_batch=self.settings.batch_max_size,
            max_wait_s=self.settings.batch_max_wait_ms / 1000,
            executor=self.executor,
            name=model.id,
            on_batch=on_batch,
            # On a GPU the pass waits on the device; that wait belongs in a thread.
            inline_max_s=(
                self.settings.batch_inline_max_ms / 1000 if self.device.type == "cpu" else 0.0
            ),
        )
        self._batchers[model.id] = (model, batcher)
        return batcher

    async def logits(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        """Logits [N, classes] for inputs [N, C, H, W] already shaped for `model`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Another event loop than the lifespan's (an app driven without its lifespan):
            # batchers of the old loop cannot run here.
            self._loop = loop
            self._batchers.clear()
        for _ in range(3):
            try:
                return await self._batcher(model).submit(x)
            except BatcherClosedError:
                # Evicted between lookup and submit: this request still has the model.
                continue
        raise RuntimeError(f"model {model.id}: no batcher would take the request")


def model_server_for(app: Any) -> ModelServer:
    """The app's model server (made by its lifespan; made here when that did not run)."""
    server = getattr(app.state, "model_server", None)
    if server is None:
        server = ModelServer(get_settings())
        app.state.model_server = server
    return server
