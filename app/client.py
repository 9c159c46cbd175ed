"""The command-line client for the HTTP API: submit, status, follow, predict."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}
# Following events: failed connection tries in a row before giving up, and the pause
# between them (a restarting server has about a minute to come back).
RECONNECT_ATTEMPTS = 30
RECONNECT_PAUSE_SECONDS = 2.0


class ClientError(RuntimeError):
    """An error answer from the API, with its problem detail."""


class Client:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0) -> None:
        if not api_key:
            raise ClientError("no API key: set STILLHOUSE_API_KEY (stillhouse keys create)")
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail") or body.get("error") or response.text
                errors = body.get("errors")
            except ValueError:
                detail, errors = response.text, None
            lines = [f"HTTP {response.status_code}: {detail}"]
            for err in errors or []:
                lines.append(f"  {err.get('field')}: {err.get('message')}")
            raise ClientError("\n".join(lines))
        return response.json() if response.content else None

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/api/v1/jobs", json=spec, headers=headers))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/api/v1/jobs/{job_id}"))

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Follow the job's event stream, reconnecting with Last-Event-ID if it drops.

        Gives up (re-raising the last error) after `RECONNECT_ATTEMPTS` failed tries in a
        row, so that a server that is gone for good ends the command instead of hanging it.
        """
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.http.stream(
                    "GET",
                    f"/api/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._check(response)
                    event_type, data = "message", ""
                    for line in response.iter_lines():
                        if line.startswith("id:"):
                            last_id = line[3:].strip()
                        elif line.startswith("event:"):
                            event_type = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line == "" and data:
                            failures = 0
                            yield event_type, json.loads(data)
                            event_type, data = "message", ""
                return
            except httpx.TransportError as exc:
                # TransportError covers dropped reads, refused connections and timeouts.
                failures += 1
                if failures >= RECONNECT_ATTEMPTS:
                    raise
                log.warning(
                    "event stream dropped (%s); reconnecting (%d/%d)",
                    exc,
                    failures,
                    RECONNECT_ATTEMPTS,
                )
                time.sleep(RECONNECT_PAUSE_SECONDS)

    def predict(self, model_id: str, images: list[Path], k: int = 3) -> dict[str, Any]:
        files = [("files", (p.name, p.read_bytes(), _mime(p))) for p in images]
        return self._check(
            self.http.post(f"/api/v1/models/{model_id}/predict", params={"k": k}, files=files)
        )


def _mime(path: Path) -> str:
    return "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"


def follow(client: Client, job_id: str, out: Any = sys.stderr) -> dict[str, Any]:
    """Show a live progress bar from the event stream; return the final job."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=out)
    columns = (
        TextColumn("[bold]{task.fields[stage]}[/]"),
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("eta {task.fields[eta]}"),
        TimeRemainingColumn(),
    )
    fields = {"stage": "queued", "epoch": "-", "loss": "-", "acc": "-", "eta": "-"}
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("job", total=1.0, **fields)
        for event_type, data in client.events(job_id):
            if event_type == "progress":
                eta = data.get("eta_seconds")
                bar.update(
                    task,
                    completed=data.get("fraction") or 0.0,
                    stage=data.get("stage", "-"),
                    epoch=f"{data.get('epoch', 0)}/{data.get('epochs', '?')}",
                    loss=f"{data['loss']:.4f}" if data.get("loss") is not None else "-",
                    eta=f"{eta:.0f}s" if eta is not None else "-",
                )
            elif event_type == "metric":
                acc = data.get("val_accuracy", data.get("train_accuracy"))
                if acc is not None:
                    bar.update(task, acc=f"{acc:.3f}")
            elif event_type == "log":
                bar.console.log(data.get("message", ""))
            elif event_type == "state":
                bar.update(task, stage=data.get("state", "?").lower())
                if data.get("state") in FINAL_STATES:
                    break
    return client.job(job_id)
