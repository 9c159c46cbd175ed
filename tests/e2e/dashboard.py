"""Driving the dashboard (/ui) in Debian's headless Chromium with Python Playwright.

Not a test module. No browser is ever downloaded: Playwright launches /usr/bin/chromium,
which .ci/run installs with apt. Without it the browser tests skip with that reason, and
fail under CI=true, like the Postgres tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Request, sync_playwright
from sklearn.datasets import load_digits

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


def require_chromium() -> None:
    """Skip (or in CI fail) when the system browser is missing."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI requires it")
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def digit_png(label: int) -> bytes:
    """The first of scikit-learn's handwritten digits with this label, as an 8x8 grey PNG
    (the 0-16 pixel values scaled to 0-255)."""
    digits = load_digits()
    index = int(np.flatnonzero(digits.target == label)[0])
    pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


@dataclass
class Dashboard:
    """The page at /ui, with what it asked of the network and the errors it threw."""

    page: Page
    base_url: str
    requests: list[Request] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Playwright tags its handlers: a bound builtin such as list.append cannot be one.
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    # -- the page
    def open(self) -> None:
        self.page.goto(f"{self.base_url}/ui")

    def sign_in(self, key: str) -> None:
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Use key").click()

    @property
    def key_status(self) -> Locator:
        return self.page.locator("#key-status")

    @property
    def jobs_status(self) -> Locator:
        return self.page.locator("#jobs-status")

    # -- jobs
    def row(self, job_id: str) -> Locator:
        return self.page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')

    def row_state(self, job_id: str) -> Locator:
        return self.row(job_id).locator(".state")

    def row_fraction(self, job_id: str) -> float:
        value = self.row(job_id).locator("progress").get_attribute("data-fraction")
        return float(value or 0)

    def open_job(self, job_id: str) -> None:
        self.row(job_id).get_by_role("button").click()

    @property
    def panel(self) -> Locator:
        return self.page.locator("#job-panel")

    def figure(self, name: str) -> Locator:
        """A report cell, e.g. `student.accuracy`."""
        return self.panel.locator(f'#report-body [data-figure="{name}"]')

    def logged_event_ids(self) -> list[int]:
        ids = self.panel.locator("#events-log li").evaluate_all(
            "items => items.map(item => item.dataset.eventId)"
        )
        return [int(i) for i in ids]

    # -- submit
    def submit_spec(self, spec: dict[str, Any] | str) -> None:
        text = spec if isinstance(spec, str) else json.dumps(spec, indent=2)
        self.page.get_by_label("Job spec (JSON)").fill(text)
        self.page.get_by_role("button", name="Submit", exact=True).click()

    def spec_in_editor(self) -> dict[str, Any]:
        return json.loads(self.page.get_by_label("Job spec (JSON)").input_value())

    # -- models
    def model_card(self, model_id: str) -> Locator:
        return self.page.locator(f'#models-list article[data-model-id="{model_id}"]')

    def drop_file(self, target: Locator, name: str, data: bytes, mime: str) -> None:
        """A real drop event on `target`, carrying one file (as dragging it from a desktop)."""
        transfer = self.page.evaluate_handle(
            """([b64, name, mime]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, { type: mime }));
                return transfer;
            }""",
            [base64.b64encode(data).decode(), name, mime],
        )
        target.dispatch_event("dragover", {"dataTransfer": transfer})
        target.dispatch_event("drop", {"dataTransfer": transfer})

    # -- what the page asked for
    def foreign_requests(self) -> list[str]:
        """Requests anywhere but this app (data: and blob: URLs stay in the page)."""
        own = re.compile(rf"^({re.escape(self.base_url)}/|data:|blob:)")
        return [r.url for r in self.requests if not own.match(r.url)]

    def event_stream_requests(self, job_id: str) -> list[Request]:
        return [r for r in self.requests if r.url.endswith(f"/api/v1/jobs/{job_id}/events")]
