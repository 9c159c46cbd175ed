"""The dashboard (/ui) in real headless Chromium, against the real API and worker processes.

SQLite only: the page talks HTTP, and the database behind the API is covered by the other
e2e tests on both backends. One browser serves the module; each test gets a fresh page
(so a fresh sessionStorage, hence no key). With STILLHOUSE_UI_SCREENSHOT=path set, the
last test also runs a fuller pipeline and saves the README's screenshot there.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Route, expect

from tests.e2e.conftest import Stack
from tests.e2e.dashboard import VIEWPORT, Dashboard, chromium, digit_png
from tests.helpers import long_train_spec, tiny_pipeline_spec, tiny_train_spec, wait_for

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("e2e_stack", ["sqlite"], indirect=True, scope="module"),
]

# Seconds the page may take to show what the API already knows (a job's training is
# waited for separately, with the API's own clock).
UI_TIMEOUT_MS = 15_000
JOB_TIMEOUT_MS = 60_000
SCREENSHOT_ENV = "STILLHOUSE_UI_SCREENSHOT"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def dashboard(browser: Browser, stack: Stack) -> Iterator[Dashboard]:
    """A fresh page at /ui (no key yet); afterwards, no script error and nothing fetched
    from anywhere but the app."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    dash = Dashboard(context.new_page(), str(stack.client().base_url).rstrip("/"))
    dash.open()
    try:
        yield dash
        assert dash.page_errors == []
        assert dash.foreign_requests() == []
    finally:
        context.close()


def signed_in(dash: Dashboard, stack: Stack) -> Dashboard:
    dash.sign_in(stack.key)
    expect(dash.key_status).to_contain_text("Key accepted")
    return dash


def api_detail(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()["detail"]


def test_the_page_needs_no_key_and_serves_only_its_own_files(stack: Stack):
    base = stack.client().base_url
    with httpx.Client(base_url=base) as anonymous:
        page = anonymous.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        # The browser itself refuses anything from elsewhere.
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
        assert {Path(a).suffix for a in assets} == {".css", ".js"}
        for asset in assets:
            r = anonymous.get(asset)
            assert r.status_code == 200, asset
        assert (
            anonymous.get("/ui/static/main.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        assert anonymous.get("/ui/static/routes.py").status_code == 404
        assert anonymous.get("/ui/static/../routes.py").status_code == 404
        # The page is no part of the API's contract.
        assert not any(p.startswith("/ui") for p in anonymous.get("/openapi.json").json()["paths"])


def test_a_wrong_key_shows_the_apis_401_message(stack: Stack, dashboard: Dashboard):
    wrong = "sh_not-a-key"
    refused = httpx.get(
        f"{stack.client().base_url}/api/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}
    )
    assert refused.status_code == 401

    dashboard.sign_in(wrong)

    expect(dashboard.key_status).to_contain_text(api_detail(refused))
    expect(dashboard.key_status).to_contain_text("401")
    expect(dashboard.page.locator("#jobs-body tr")).to_have_count(0)
    # The refused key is not kept for the next load.
    assert dashboard.page.evaluate("sessionStorage.length") == 0


def test_a_job_submitted_from_the_editor_runs_to_its_report(stack: Stack, dashboard: Dashboard):
    stack.workers(1)
    signed_in(dashboard, stack)
    expect(dashboard.jobs_status).to_contain_text("No jobs yet")
    # The editor starts from the OpenAPI document's first example; the list offers them all.
    assert dashboard.spec_in_editor()["kind"] == "train"
    dashboard.page.get_by_label("Start from an example").select_option("pipeline")
    assert dashboard.spec_in_editor()["kind"] == "pipeline"

    dashboard.submit_spec(tiny_pipeline_spec(name="ui-pipeline", baseline=True))

    expect(dashboard.page.locator("#submit-status")).to_contain_text("Submitted job ui-pipeline")
    [listed] = stack.client().get("/api/v1/jobs").json()["jobs"]
    job_id = listed["id"]
    expect(dashboard.row(job_id)).to_be_visible()
    expect(dashboard.row_state(job_id)).to_have_text("SUCCEEDED", timeout=JOB_TIMEOUT_MS)
    assert dashboard.row_fraction(job_id) == 1.0

    job = stack.job(job_id)
    report = job["report"]
    # The panel opened on the new job: the report, in the API's figures.
    expect(dashboard.panel.locator("#job-title")).to_have_text("Job ui-pipeline")
    student_accuracy = f"{report['student']['accuracy'] * 100:.1f}%"
    expect(dashboard.figure("student.accuracy")).to_have_text(student_accuracy)
    expect(dashboard.figure("baseline.accuracy")).to_have_text(
        f"{report['baseline']['accuracy'] * 100:.1f}%"
    )
    expect(dashboard.figure("student.params")).to_have_text(f"{report['student']['params']:,}")
    expect(dashboard.panel.locator('[data-headline="gain"]')).to_contain_text(
        "over the same student trained from scratch"
    )
    expect(dashboard.panel.locator('[data-headline="compression"]')).to_contain_text(
        f"{versus(report['compression'], 'fewer', 'more')} parameters than the teacher"
    )
    expect(dashboard.panel.locator(".summary")).to_have_text(report["summary"])
    # Every event, once, in order, as the API streamed them; the stages they name (the
    # worker's, whatever they are); the plot drawn from them.
    events = stack.events(job_id)
    api_ids = [e.id for e in events]
    wait_for("the whole event log", lambda: dashboard.logged_event_ids() == api_ids, 10)
    stages = [e.data["stage"] for e in events if e.type in ("progress", "metric")]
    assert {"teacher", "distill", "finetune", "baseline"} <= set(stages)
    expect(dashboard.panel.locator("#stages-body th")).to_have_text(list(dict.fromkeys(stages)))
    plot = dashboard.panel.locator('img[data-plot="learning_curves"]')
    expect(plot).to_be_visible()
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0")
    # Its student is served: the models list shows it.
    expect(dashboard.model_card(job["model_id"])).to_contain_text("ui-pipeline")
    # The stream was read with fetch() and the key (EventSource could not send it).
    streams = dashboard.event_stream_requests(job_id)
    assert streams and streams[0].headers["authorization"] == f"Bearer {stack.key}"


def test_a_bad_spec_shows_the_field_error(stack: Stack, dashboard: Dashboard):
    signed_in(dashboard, stack)
    spec = tiny_train_spec()
    spec["train"]["epochs"] = -1
    refused = stack.client().post("/api/v1/jobs", json=spec)
    assert refused.status_code == 422
    [error] = refused.json()["errors"]

    dashboard.submit_spec(spec)

    item = dashboard.page.locator(f'#spec-errors li[data-field="{error["field"]}"]')
    expect(item).to_have_text(f"{error['field']}: {error['message']}")
    expect(dashboard.page.get_by_label("Job spec (JSON)")).to_have_attribute("aria-invalid", "true")

    dashboard.submit_spec('{"kind": "train",')
    expect(dashboard.page.locator("#spec-errors")).to_contain_text("not valid JSON")
    assert stack.client().get("/api/v1/jobs").json()["jobs"] == []


def test_a_dropped_digit_is_predicted(stack: Stack, dashboard: Dashboard):
    stack.workers(1)
    job = stack.submit(tiny_train_spec(name="ui-digits"))
    model_id = stack.wait_state(job["id"], "SUCCEEDED")["model_id"]
    png = digit_png(2)
    answer = stack.client().post(
        f"/api/v1/models/{model_id}/predict",
        params={"k": 3},
        files=[("files", ("two.png", png, "image/png"))],
    )
    assert answer.status_code == 200, answer.text
    [expected] = answer.json()["predictions"]

    signed_in(dashboard, stack)
    card = dashboard.model_card(model_id)
    expect(card).to_contain_text("ui-digits")
    dashboard.drop_file(card.locator(".drop-zone"), "two.png", png, "image/png")

    prediction = card.locator("figure.prediction")
    expect(prediction).to_have_attribute("data-label", expected["label"])
    expect(prediction.locator(".top-k .label")).to_have_text(
        [e["label"] for e in expected["top_k"]]
    )
    expect(prediction).to_contain_text("two.png")


def versus(ratio: float, above: str, below: str) -> str:
    """As the dashboard words a teacher/student ratio (format.js `versus`)."""
    word, x = (above, ratio) if ratio >= 1 else (below, 1 / ratio)
    return f"{x:,.0f}\u00d7 {word}" if x >= 100 else f"{x:.1f}\u00d7 {word}"


def test_cancel_a_long_job_from_its_panel(stack: Stack, dashboard: Dashboard):
    stack.workers(1)
    job = stack.submit(long_train_spec())
    job_id = job["id"]
    signed_in(dashboard, stack)
    dashboard.open_job(job_id)
    expect(dashboard.row_state(job_id)).to_have_text("RUNNING")
    # Progress moves on the page as the stream brings it.
    first = wait_for("progress", lambda: dashboard.row_fraction(job_id) or None, 15)
    wait_for("more progress", lambda: dashboard.row_fraction(job_id) > first, 15)

    # Delete while it runs: the API's 409, in its words.
    running = stack.client().delete(f"/api/v1/jobs/{job_id}")
    assert running.status_code == 409
    dashboard.panel.get_by_role("button", name="Delete").click()
    expect(dashboard.panel.locator("#job-action-status")).to_have_text(api_detail(running))

    dashboard.panel.get_by_role("button", name="Cancel").click()

    expect(dashboard.panel.locator("#job-state")).to_have_text(re.compile("CANCELL(ING|ED)"))
    expect(dashboard.row_state(job_id)).to_have_text("CANCELLED")
    assert stack.job(job_id)["state"] == "CANCELLED"


def test_a_dropped_stream_resumes_with_last_event_id(stack: Stack, dashboard: Dashboard):
    stack.workers(1)
    job = stack.submit(tiny_train_spec(name="ui-resume"))
    stack.wait_state(job["id"], "SUCCEEDED")
    events = stack.events(job["id"])
    cut = 3
    # The first connection ends after three events, as a dropped one would; the page must
    # reconnect with the last id it saw and get the rest, each event once.
    head = "retry: 50\n\n" + "".join(
        f"id: {e.id}\nevent: {e.type}\ndata: {json.dumps(e.data)}\n\n" for e in events[:cut]
    )
    resumed_from: list[str | None] = []

    def drop_first(route: Route) -> None:
        if not resumed_from and "last-event-id" not in route.request.headers:
            resumed_from.append(None)
            route.fulfill(status=200, content_type="text/event-stream", body=head)
        else:
            resumed_from.append(route.request.headers.get("last-event-id"))
            route.continue_()

    dashboard.page.route(f"**/api/v1/jobs/{job['id']}/events", drop_first)
    signed_in(dashboard, stack)
    dashboard.open_job(job["id"])

    all_ids = [e.id for e in events]
    wait_for("the resumed event log", lambda: dashboard.logged_event_ids() == all_ids, 10)
    assert resumed_from == [None, str(events[cut - 1].id)]
    # A train job has no report: the panel shows its evaluation instead.
    accuracy = stack.job(job["id"])["metrics"]["accuracy"]
    expect(dashboard.figure("student.accuracy")).to_have_text(f"{accuracy * 100:.1f}%")


@pytest.mark.skipif(not os.environ.get(SCREENSHOT_ENV), reason=f"set {SCREENSHOT_ENV}=path")
def test_readme_screenshot(stack: Stack, dashboard: Dashboard):
    """docs/img/dashboard.png: a finished pipeline with its report, and a model tried."""
    stack.workers(1)
    stack.submit(tiny_train_spec(name="digits-0-2", epochs=10))
    pipeline = tiny_pipeline_spec(
        name="digits-transfer", distill_epochs=10, finetune_epochs=30, baseline=True
    )
    pipeline["teacher"]["train"]["epochs"] = 10
    job = stack.submit(pipeline)
    model_id = stack.wait_state(job["id"], "SUCCEEDED", timeout=300)["model_id"]

    signed_in(dashboard, stack)
    dashboard.open_job(job["id"])
    expect(dashboard.figure("student.accuracy")).to_be_visible()
    dashboard.drop_file(
        dashboard.model_card(model_id).locator(".drop-zone"), "seven.png", digit_png(7), "image/png"
    )
    expect(dashboard.model_card(model_id).locator("figure.prediction")).to_be_visible()
    expect(dashboard.panel.locator('img[data-plot="learning_curves"]')).to_be_visible()
    dashboard.page.evaluate("window.scrollTo(0, 0)")
    path = Path(os.environ[SCREENSHOT_ENV])
    dashboard.page.screenshot(path=str(path))
    log.info("saved %s (%d bytes)", path, path.stat().st_size)
    assert path.stat().st_size < 300_000


# ------------------------------------------------------------------ the API's docs
def test_docs_load_offline_and_authorize_makes_try_it_out_work(browser: Browser, stack: Stack):
    """/docs (Swagger UI) and /redoc render from the app's own files (no CDN), and the
    "Authorize" button takes an API key that "Try it out" then sends."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    base = str(stack.client().base_url).rstrip("/")
    # Every request the pages made and how it ended: what their Content-Security-Policy
    # stopped before it left the browser ends in "csp" (ReDoc's bundle reaches for its
    # vendor's logo on a CDN); anything else foreign would be an external asset.
    requests: list[str] = []
    outcomes: dict[str, str] = {}
    page.on("request", lambda request: requests.append(request.url))
    page.on("requestfinished", lambda request: outcomes.setdefault(request.url, "finished"))
    page.on(
        "requestfailed", lambda request: outcomes.setdefault(request.url, request.failure or "")
    )
    try:
        page.goto(f"{base}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Stillhouse")
        page.get_by_role("button", name="Authorize").first.click()
        dialog = page.locator(".dialog-ux")
        dialog.locator("#auth-bearer-value").fill(stack.key)
        dialog.get_by_role("button", name="Apply credentials").click()
        expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible()
        dialog.locator("button.btn-done").click()
        listing = page.locator("#operations-jobs-list_jobs_api_v1_jobs_get")
        listing.locator(".opblock-summary").click()
        listing.get_by_role("button", name="Try it out").click()
        listing.get_by_role("button", name="Execute").click()
        answer = listing.locator(".live-responses-table tbody .response-col_status").first
        expect(answer).to_contain_text("200")
        expect(listing.locator(".live-responses-table .microlight").first).to_contain_text('"jobs"')
        page.goto(f"{base}/redoc")
        expect(page.locator("redoc h1").first).to_contain_text("Stillhouse")
        own = (f"{base}/", "data:", "blob:")
        foreign = [u for u in requests if not u.startswith(own)]
        wait_for("every foreign request to end", lambda: all(u in outcomes for u in foreign), 10)
        assert [u for u in foreign if "csp" not in outcomes[u].lower()] == []
    finally:
        context.close()
