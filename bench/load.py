"""The load generator of bench/serving.py: `wrk` when installed (a C client, so that the
client's own cost stays small beside the server's on a 2-core machine), else a minimal
HTTP/1.1 client on asyncio streams. Both post one request over and over on keep-alive
connections and answer the same figures: requests, requests/s, p50 and p99 in ms.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONCURRENCY = 64


# ------------------------------------------------------------------------------ figures
def summary(latencies_s: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies_s)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))] * 1000

    return {
        "requests": len(ordered),
        "rps": round(len(ordered) / seconds, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(pct(0.99), 3),
    }


# --------------------------------------------------------------------------- HTTP load
@dataclass(frozen=True)
class Target:
    """What a load run posts: the same request, over and over."""

    port: int
    path: str
    headers: dict[str, str]
    body: bytes

    def raw(self) -> bytes:
        head = f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return (head + f"Content-Length: {len(self.body)}\r\n\r\n").encode() + self.body


class Client:
    """The load generator of a run: wrk when installed, else the asyncio client."""

    def __init__(self, quick: bool, force_python: bool = False) -> None:
        self.wrk = None if force_python else shutil.which("wrk")
        self.seconds = 3 if quick else 8
        self.requests = {1: 800 if quick else 3000, CONCURRENCY: 3000 if quick else 12000}
        self.name = "wrk" if self.wrk else "asyncio client"

    def run(self, target: Target, connections: int) -> dict[str, float]:
        if self.wrk:
            return wrk_load(self.wrk, target, connections, self.seconds)
        return asyncio.run(_callers(target, connections, self.requests[connections]))

    def warm(self, target: Target) -> None:
        # As many connections as the load: with several serving processes, each gets
        # some and loads the model before anything is measured.
        asyncio.run(_callers(target, CONCURRENCY, 2 * CONCURRENCY))


WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
%s
done = function(summary, latency, requests)
  io.write(string.format("BENCH %%d %%f %%d %%d %%d\\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (its latencies with it: one real run)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_rps": [r["rps"] for r in runs]}


def wrk_load(wrk: str, target: Target, connections: int, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(target.body)
        headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % headers)
        out = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
             f"http://127.0.0.1:{target.port}{target.path}"],
            env={**os.environ, "BENCH_BODY": str(body)},
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    requests, duration, p50_us, p99_us, errors = line.split()[1:]
    if int(errors):
        raise RuntimeError(f"wrk: {errors} failed requests\n{out.stdout}")
    return {
        "requests": int(requests),
        "rps": round(int(requests) / float(duration), 1),
        "p50_ms": round(int(p50_us) / 1000, 3),
        "p99_ms": round(int(p99_us) / 1000, 3),
    }


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    if status != b"200":
        body = await reader.read(2000)
        raise RuntimeError(f"HTTP {status.decode()}: {body[:300]!r}")
    lower = head.lower()
    at = lower.index(b"content-length:") + len(b"content-length:")
    length = int(lower[at : lower.index(b"\r\n", at)])
    return await reader.readexactly(length)


async def _callers(target: Target, callers: int, total: int) -> dict[str, float]:
    request = target.raw()
    conns = [await asyncio.open_connection("127.0.0.1", target.port) for _ in range(callers)]
    latencies: list[float] = []
    counter = iter(range(total))

    async def caller(i: int) -> None:
        reader, writer = conns[i]
        for _ in counter:
            t0 = time.perf_counter()
            await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - t0)

    # Warm-up: every connection once, then measure.
    await asyncio.gather(*(_exchange(*conns[i], request) for i in range(callers)))
    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    seconds = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return summary(latencies, seconds)
