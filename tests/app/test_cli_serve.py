"""`stillhouse serve` as a process: a SIGTERM to it (docker stop, systemd, kill) must stop
its embedded worker too, not leave it running on its own against the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import free_port

BIN = Path(sys.executable).parent / "stillhouse"


def _children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ", 1)[-1].startswith("Z"))


def test_sigterm_to_serve_stops_its_worker(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env |= {
        "STILLHOUSE_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "STILLHOUSE_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "STILLHOUSE_THREADS": "1",
    }
    serve = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = _children(serve.pid)
            try:
                if workers and httpx.get(f"http://127.0.0.1:{port}/v2/health/live").is_success:
                    break
            except httpx.TransportError:
                pass
            assert serve.poll() is None, "serve exited early"
            time.sleep(0.3)
        else:
            raise AssertionError("serve did not come up")
        assert len(workers) == 1

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while _alive(workers[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(workers[0]), "the embedded worker outlived `stillhouse serve`"
    finally:
        for pid in [serve.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        serve.wait(timeout=10)


def test_client_commands_fail_with_a_message_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    env |= {"STILLHOUSE_API_URL": f"http://127.0.0.1:{free_port()}", "STILLHOUSE_API_KEY": "k"}
    for args, words in (
        (["status", "some-job"], "cannot reach the API"),
        (["predict", "some-model", str(tmp_path / "missing.png")], "missing.png"),
    ):
        done = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
