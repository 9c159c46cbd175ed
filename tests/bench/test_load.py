"""bench/load.py against a real server: the canned ASGI app of bench/serving.py under
uvicorn, driven by the asyncio client and by wrk (when installed, as .ci/run does)."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.load import Client, Target
from bench.serving import canned_server


@pytest.fixture(scope="module")
def canned():
    with canned_server(dict(os.environ)) as server:
        yield server


def target(port: int) -> Target:
    return Target(port, "/", {"Content-Type": "application/json"}, b'{"inputs": [[[0.5]]]}')


def check(figures: dict) -> None:
    assert figures["requests"] > 0 and figures["rps"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_the_asyncio_client_counts_every_request(canned):
    client = Client(quick=True, force_python=True)
    client.requests = {1: 50, 64: 200}
    one = client.run(target(canned.port), 1)
    assert one["requests"] == 50
    check(one)
    many = client.run(target(canned.port), 64)
    assert many["requests"] == 200
    check(many)


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)"
)
def test_wrk_figures_are_parsed(canned):
    client = Client(quick=True)
    assert client.name == "wrk"
    client.seconds = 1
    check(client.run(target(canned.port), 4))
