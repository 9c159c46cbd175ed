"""A thread-safe LRU cache of loaded models, bounded by count and by bytes.

Models load on first use (`get_or_load`, one load per model even when many requests miss
at once), the least recently used one goes when either bound is passed, and `evict`
drops one at once (a deleted model). A model bigger than the byte bound on its own is
still served, and leaves at the next insert.

Callbacks (`on_evict`) run outside the lock, so that they may take other locks.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from app.serving.metrics import (
    CACHE_BYTES,
    CACHE_EVICTIONS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_MODELS,
)

log = logging.getLogger(__name__)

V = TypeVar("V")


class ModelCache(Generic[V]):
    def __init__(
        self,
        *,
        max_models: int,
        max_bytes: int,
        sizeof: Callable[[V], int],
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        # One lock per key being loaded: concurrent misses wait for the first load.
        self._loading: dict[str, threading.Lock] = {}
        # Bumped by `evict` during a load: a load that began before a delete must not
        # insert what it loaded. Entries live only while their key loads.
        self._generation: dict[str, int] = {}

    # -- reads
    def get(self, key: str) -> V | None:
        """The cached value (counted as a hit), or None without counting a miss."""
        with self._lock:
            return self._hit(key)

    def _hit(self, key: str) -> V | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        self._items.move_to_end(key)
        CACHE_HITS.labels(key).inc()
        return entry[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def keys(self) -> list[str]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._items)

    # -- loads
    def get_or_load(self, key: str, load: Callable[[], V]) -> V:
        """The cached value, or `load()`'s, inserted (evicting others past the bounds)."""
        with self._lock:
            value = self._hit(key)
            if value is not None:
                return value
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                value = self._hit(key)
                if value is not None:
                    return value
                generation = self._generation.get(key, 0)
            CACHE_MISSES.labels(key).inc()
            try:
                value = load()
            except BaseException:
                with self._lock:
                    self._done_loading(key, key_lock)
                raise
            evicted = self._insert(key, value, generation, key_lock)
        self._notify(evicted)
        return value

    def _done_loading(self, key: str, key_lock: threading.Lock) -> None:
        if self._loading.get(key) is key_lock:
            del self._loading[key]
            self._generation.pop(key, None)

    def _insert(
        self, key: str, value: V, generation: int, key_lock: threading.Lock
    ) -> list[tuple[str, V]]:
        size = self._sizeof(value)
        evicted: list[tuple[str, V]] = []
        with self._lock:
            stale = self._generation.get(key, 0) != generation
            self._done_loading(key, key_lock)
            if stale:
                # Evicted (deleted) while it loaded: serve this request, keep nothing.
                return []
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > 1 and (
                len(self._items) > self.max_models or self._bytes > self.max_bytes
            ):
                old_key, (old_value, old_size) = self._items.popitem(last=False)
                if old_key == key:
                    # Only reached when the new one is not the LRU; kept for safety.
                    self._items[key] = (old_value, old_size)
                    break
                self._bytes -= old_size
                evicted.append((old_key, old_value))
            if size > self.max_bytes:
                log.warning(
                    "model %s (%d bytes) exceeds the cache's %d bytes on its own",
                    key,
                    size,
                    self.max_bytes,
                )
            self._gauges()
        return evicted

    # -- evictions
    def evict(self, key: str) -> bool:
        """Drop `key` now (and any load of it in progress); True if it was loaded."""
        with self._lock:
            if key in self._loading:
                self._generation[key] = self._generation.get(key, 0) + 1
            entry = self._items.pop(key, None)
            if entry is not None:
                self._bytes -= entry[1]
            self._gauges()
        if entry is None:
            return False
        self._notify([(key, entry[0])])
        return True

    def clear(self) -> None:
        with self._lock:
            evicted = [(k, v) for k, (v, _) in self._items.items()]
            self._items.clear()
            self._bytes = 0
            self._gauges()
        self._notify(evicted)

    def _notify(self, evicted: list[tuple[str, V]]) -> None:
        for key, value in evicted:
            CACHE_EVICTIONS.labels(key).inc()
            log.info("model %s evicted from the cache", key)
            if self._on_evict is not None:
                try:
                    self._on_evict(key, value)
                except Exception:
                    log.exception("eviction callback for %s failed", key)

    def _gauges(self) -> None:
        CACHE_MODELS.set(len(self._items))
        CACHE_BYTES.set(self._bytes)
