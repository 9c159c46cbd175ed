"""The LRU model cache: bounds by count and bytes, single-flight loads, evictions."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from app.metrics import REGISTRY
from app.serving.cache import ModelCache


class Blob:
    def __init__(self, key: str, size: int) -> None:
        self.key, self.size = key, size


def make(max_models: int = 3, max_bytes: int = 10_000, evicted: list | None = None):
    def on_evict(key: str, value: Blob) -> None:
        if evicted is not None:
            evicted.append(key)

    return ModelCache[Blob](
        max_models=max_models, max_bytes=max_bytes, sizeof=lambda b: b.size, on_evict=on_evict
    )


def keys(n: int) -> list[str]:
    # Fresh keys per test: the metric series are process-wide.
    return [f"m-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]


def sample(name: str, key: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": key}) or 0.0


def test_least_recently_used_goes_first_when_the_count_is_passed():
    evicted: list[str] = []
    cache = make(max_models=2, evicted=evicted)
    a, b, c = keys(3)
    cache.get_or_load(a, lambda: Blob(a, 1))
    cache.get_or_load(b, lambda: Blob(b, 1))
    assert cache.get(a) is not None  # a is now the most recent
    cache.get_or_load(c, lambda: Blob(c, 1))
    assert evicted == [b]
    assert cache.keys() == [a, c]
    assert len(cache) == 2


def test_bytes_bound_evicts_until_it_fits():
    evicted: list[str] = []
    cache = make(max_models=10, max_bytes=100, evicted=evicted)
    a, b, c = keys(3)
    cache.get_or_load(a, lambda: Blob(a, 40))
    cache.get_or_load(b, lambda: Blob(b, 40))
    assert cache.total_bytes == 80
    cache.get_or_load(c, lambda: Blob(c, 70))
    assert evicted == [a, b]
    assert cache.keys() == [c] and cache.total_bytes == 70


def test_a_model_bigger_than_the_bound_is_still_served_and_leaves_next():
    evicted: list[str] = []
    cache = make(max_models=10, max_bytes=100, evicted=evicted)
    big, small = keys(2)
    value = cache.get_or_load(big, lambda: Blob(big, 500))
    assert value.size == 500 and big in cache
    cache.get_or_load(small, lambda: Blob(small, 10))
    assert evicted == [big] and cache.keys() == [small]


def test_hits_misses_and_evictions_are_counted_per_model():
    cache = make(max_models=1)
    a, b = keys(2)
    cache.get_or_load(a, lambda: Blob(a, 1))
    cache.get_or_load(a, lambda: Blob(a, 1))
    cache.get(a)
    cache.get_or_load(b, lambda: Blob(b, 1))
    assert sample("stillhouse_model_cache_misses_total", a) == 1
    assert sample("stillhouse_model_cache_hits_total", a) == 2
    assert sample("stillhouse_model_cache_evictions_total", a) == 1
    assert sample("stillhouse_model_cache_evictions_total", b) == 0
    assert cache.get(a) is None  # a miss by `get` is not counted: get_or_load counts it
    assert sample("stillhouse_model_cache_misses_total", a) == 1


def test_evict_drops_at_once_and_reports_whether_it_was_loaded():
    evicted: list[str] = []
    cache = make(evicted=evicted)
    (a,) = keys(1)
    assert cache.evict(a) is False
    cache.get_or_load(a, lambda: Blob(a, 5))
    assert cache.evict(a) is True
    assert a not in cache and cache.total_bytes == 0 and evicted == [a]


def test_concurrent_misses_load_once():
    cache = make()
    (a,) = keys(1)
    loads = 0
    lock = threading.Lock()
    start = threading.Barrier(8)

    def load() -> Blob:
        nonlocal loads
        with lock:
            loads += 1
        time.sleep(0.05)
        return Blob(a, 1)

    results: list[Blob] = []

    def worker() -> None:
        start.wait()
        results.append(cache.get_or_load(a, load))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_load_is_not_cached_and_the_next_call_retries():
    cache = make()
    (a,) = keys(1)

    def broken() -> Blob:
        raise OSError("disk says no")

    with pytest.raises(OSError):
        cache.get_or_load(a, broken)
    assert a not in cache
    assert cache.get_or_load(a, lambda: Blob(a, 1)).key == a


def test_a_model_deleted_while_it_loads_is_not_kept():
    cache = make()
    (a,) = keys(1)
    loading, release = threading.Event(), threading.Event()

    def slow() -> Blob:
        loading.set()
        release.wait(5)
        return Blob(a, 1)

    got: list[Blob] = []
    t = threading.Thread(target=lambda: got.append(cache.get_or_load(a, slow)))
    t.start()
    assert loading.wait(5)
    cache.evict(a)  # the delete arrives mid-load
    release.set()
    t.join()
    assert got and got[0].key == a  # the request in flight is still answered
    assert a not in cache


def test_bounds_must_make_sense():
    with pytest.raises(ValueError):
        make(max_models=0)
