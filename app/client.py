"""The command-line client for the HTTP API: the requests and the event stream.

How a job's progress and events read on a terminal is `app.job_progress`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

# Following events: failed connection tries in a row before giving up, and the pause
# between them (a restarting server has about a minute to come back).
RECONNECT_ATTEMPTS = 30
RECONNECT_PAUSE_SECONDS = 2.0
# The API's largest page (app/services/paging.py, not imported: the client stays light).
MAX_PAGE_SIZE = 500


class ClientError(RuntimeError):
    """An error answer from the API, as one line with its problem detail."""


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
            raise ClientError(problem_line(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            # Another server on that port, or a proxy's page: say so, not a traceback.
            raise ClientError(
                f"{response.request.url} answered {response.status_code} without JSON; "
                "is STILLHOUSE_API_URL a Stillhouse API?"
            ) from exc

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/api/v1/jobs", json=spec, headers=headers))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(_job_path(job_id)))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.post(_job_path(job_id) + ":cancel"))

    def listing(
        self,
        path: str,
        items: str,
        *,
        limit: int,
        page_token: str | None = None,
        **filters: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` of a list's `items`, newest first, following `next_page_token`;
        and the token that continues right after them (None when there are no more).

        Each page asks for no more than is still wanted, so the listing ends on a page
        boundary and the token it hands back skips nothing."""
        got: list[dict[str, Any]] = []
        token = page_token
        while len(got) < limit:
            params = {k: v for k, v in filters.items() if v is not None}
            params["page_size"] = str(min(limit - len(got), MAX_PAGE_SIZE))
            if token:
                params["page_token"] = token
            body = self._check(self.http.get(path, params=params))
            got.extend(body[items])
            token = body.get("next_page_token")
            if not token:
                break
        return got, token

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
                    _job_path(job_id) + "/events",
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
            self.http.post(
                f"/api/v1/models/{quote(model_id, safe='')}/predict", params={"k": k}, files=files
            )
        )


def _job_path(job_id: str) -> str:
    # Quoted: an id typed with a "/" or "?" must not reach another route.
    return f"/api/v1/jobs/{quote(job_id, safe='')}"


def _mime(path: Path) -> str:
    return "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"


def problem_line(response: httpx.Response) -> str:
    """An error answer as one line: the status and the problem's `detail` (with any field
    errors it does not already name), or a collapsed snippet of a body that is not one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("error") or body.get("title") or "")
        fields = [
            f"{e.get('field')}: {e.get('message')}"
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        detail = "; ".join([detail] * bool(detail) + [f for f in fields if f not in detail])
    else:
        detail = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code}: {detail or response.reason_phrase}"
