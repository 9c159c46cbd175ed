"""Prometheus metrics: HTTP latency, and job gauges read from the database at scrape time.

Job figures come from the jobs table rather than from counters in this process: the API
never runs jobs, and several API processes must report the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.db import get_sessionmaker
from app.models import FINISHED_STATES, Job, JobState
from app.models.base import utcnow

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

HTTP_LATENCY = Histogram(
    "stillhouse_http_request_duration_seconds",
    "HTTP request latency by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

# Job durations run from seconds (tiny jobs) to days.
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class JobsCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        try:
            with get_sessionmaker()() as session:
                by_state = dict(
                    session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
                )
                oldest = session.execute(
                    select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED)
                ).scalar()
                spans = session.execute(
                    select(Job.kind, Job.started_at, Job.finished_at).where(
                        Job.state.in_(list(FINISHED_STATES)), Job.started_at.is_not(None)
                    )
                ).all()
        except Exception:
            log.exception("metrics: the database did not answer")
            return
        jobs = GaugeMetricFamily("stillhouse_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "stillhouse_queue_depth", "Jobs waiting for a worker.", value=by_state.get("QUEUED", 0)
        )
        age = 0.0
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            age = max(0.0, (utcnow() - oldest).total_seconds())
        yield GaugeMetricFamily(
            "stillhouse_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none).",
            value=age,
        )
        yield _durations(spans)


def _durations(spans: list[tuple[str, object, object]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "stillhouse_job_duration_seconds",
        "Run time of finished jobs (first start to finish), by kind.",
        labels=["kind"],
    )
    by_kind: dict[str, list[float]] = {}
    for kind, started, finished in spans:
        if started is None or finished is None:
            continue
        by_kind.setdefault(kind, []).append((finished - started).total_seconds())  # type: ignore[operator]
    for kind, values in sorted(by_kind.items()):
        buckets = [(str(b), sum(1 for v in values if v <= b)) for b in JOB_DURATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([kind], buckets, sum_value=sum(values))
    return family


REGISTRY.register(JobsCollector())


class TimingMiddleware:
    """HTTP latency by route template, as plain ASGI middleware.

    Starlette's BaseHTTPMiddleware wraps every body read in task groups; measured here it
    cost about a quarter of the prediction throughput. This one only watches the status.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router stores the matched route in the (shared) scope; `path_format` is its
            # template without path convertors (`{job_id}`, not `{job_id:id}`).
            template = getattr(scope.get("route"), "path_format", "unmatched")
            HTTP_LATENCY.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
