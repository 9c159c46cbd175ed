"""Serving metrics, per model: prediction latency, batch sizes, forward time, cache traffic.

Registered in `app.metrics.REGISTRY`, so that /metrics shows them beside the HTTP and job
figures. A deleted model's series are removed (`forget_model`), so that label sets stay
bounded by the models that exist.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from app.metrics import REGISTRY

# Predictions take from a fraction of a millisecond (a small student, batch 1) to seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

PREDICT_LATENCY = Histogram(
    "stillhouse_predict_duration_seconds",
    "Prediction request latency, from the decoded request to the answer, by model and API "
    "(v1 = /api/v1/models/{id}/predict, v2 = /v2/models/{id}/infer).",
    ["model", "api"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "stillhouse_batch_size",
    "Inputs per forward pass after dynamic batching, by model.",
    ["model"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
FORWARD_LATENCY = Histogram(
    "stillhouse_forward_duration_seconds",
    "Time of one batched forward pass, by model and backend.",
    ["model", "backend"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "stillhouse_model_cache_hits_total",
    "Predictions that found their model loaded.",
    ["model"],
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    "stillhouse_model_cache_misses_total",
    "Predictions that had to load their model first.",
    ["model"],
    registry=REGISTRY,
)
CACHE_EVICTIONS = Counter(
    "stillhouse_model_cache_evictions_total",
    "Models dropped from memory, by model (LRU bound or delete).",
    ["model"],
    registry=REGISTRY,
)
CACHE_MODELS = Gauge(
    "stillhouse_model_cache_models",
    "Models loaded in this process.",
    registry=REGISTRY,
)
CACHE_BYTES = Gauge(
    "stillhouse_model_cache_bytes",
    "Bytes of weights loaded in this process (the cache's byte bound counts these).",
    registry=REGISTRY,
)


def forget_model(model_id: str) -> None:
    """Drop a deleted model's series."""
    for metric in (BATCH_SIZE, CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS):
        with contextlib.suppress(KeyError):
            metric.remove(model_id)
    for metric, other in ((PREDICT_LATENCY, ("v1", "v2")), (FORWARD_LATENCY, ("torch", "onnx"))):
        for value in other:
            with contextlib.suppress(KeyError):
                metric.remove(model_id, value)
