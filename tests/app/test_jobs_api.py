"""Every job route, on SQLite and on Postgres, through the real app and a real database.

Jobs are moved through their states with the state machine's own functions (app.core.job_states) (claim, finish,
report), the same code a worker runs, so that these tests need no training.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.config import get_settings
from app.core import job_states
from app.db import get_write_engine
from app.models import Job, JobState
from app.models.base import utcnow
from app.services.examples import PIPELINE_EXAMPLE, TRAIN_EXAMPLE
from app.services.paging import encode_token
from worker.control import JobControl
from worker.events import Reporter
from worker.train import Progress

PROBLEM = "application/problem+json"


# ---------------------------------------------------------------------------- helpers
def submit(client, headers: dict[str, str], spec: dict[str, Any], **extra: str) -> dict[str, Any]:
    r = client.post("/api/v1/jobs", json=spec, headers={**headers, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def claim(job_id: str, worker_id: str = "test-worker") -> job_states.ClaimedJob:
    """Claim `job_id` as a worker would; it must be the oldest queued job."""
    claimed = job_states.claim_next(get_write_engine(), worker_id)
    assert claimed is not None and claimed.id == job_id
    return claimed


def run_to(job_id: str, state: JobState, **error: str) -> None:
    """Claim the job and finish it in `state` (SUCCEEDED or FAILED)."""
    claim(job_id)
    assert job_states.finish(
        get_write_engine(), job_id, "test-worker", state=state, error=dict(error) or None
    )


def assert_problem(r, status: int, *fields: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    named = {e["field"] for e in body.get("errors", [])}
    for field in fields:
        assert field in named, f"{field} not in {named}: {body}"
    return body


def parse_sse(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "id" in fields and "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


# ---------------------------------------------------------------------------- create
def test_create_answers_201_with_location_and_filled_spec(client, alice, tiny_spec):
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    assert r.status_code == 201, r.text
    # A queued job's progress is an object with the contract's fields (it was null).
    progress = r.json()["progress"]
    assert {"stage", "epoch", "epochs", "fraction", "eta_seconds"} <= set(progress)
    job = r.json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] == "QUEUED" and job["kind"] == "train" and job["name"] == "tiny"
    assert job["attempts"] == 0 and job["error"] is None and job["model_id"] is None
    assert job["started_at"] is None and job["finished_at"] is None
    # Defaults are filled in, and the default evaluation is the target's test split.
    assert job["spec"]["train"]["optimizer"]["name"] == "adamw"
    assert job["spec"]["evaluate"]["dataset"] == {
        **job["spec"]["train"]["dataset"],
        "split": "test",
    }
    assert job["created_at"].endswith(("Z", "+00:00"))
    got = client.get(r.headers["Location"], headers=alice)
    assert got.status_code == 200 and got.json() == job


def test_idempotency_key_replays_and_refuses_another_body(client, alice, bob, tiny_spec):
    key = {"Idempotency-Key": "nightly-42"}
    first = client.post("/api/v1/jobs", json=tiny_spec, headers={**alice, **key})
    assert first.status_code == 201
    job_id = first.json()["id"]

    # The same body with its keys in another order is the same request.
    reordered = dict(reversed(list(tiny_spec.items())))
    again = client.post("/api/v1/jobs", json=reordered, headers={**alice, **key})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == job_id
    assert again.headers["Location"] == f"/api/v1/jobs/{job_id}"

    other = copy.deepcopy(tiny_spec)
    other["train"]["epochs"] = 3
    r = client.post("/api/v1/jobs", json=other, headers={**alice, **key})
    assert_problem(r, 422, "header.Idempotency-Key")

    # Keys are scoped per owner: bob's use of the same key is a new job of his.
    theirs = client.post("/api/v1/jobs", json=tiny_spec, headers={**bob, **key})
    assert theirs.status_code == 201 and theirs.json()["id"] != job_id

    jobs = client.get("/api/v1/jobs", headers=alice).json()["jobs"]
    assert [j["id"] for j in jobs] == [job_id]


def test_concurrent_requests_with_one_idempotency_key_make_one_job(client, alice, tiny_spec):
    from pydantic import TypeAdapter

    from app.db import get_write_sessionmaker
    from app.schemas.job_spec import JobSpec
    from app.services import jobs as jobs_service

    spec = TypeAdapter(JobSpec).validate_python(tiny_spec)
    start = threading.Barrier(4)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            start.wait()
            with get_write_sessionmaker()() as session:
                job, created = jobs_service.create_job(
                    session,
                    owner="alice",
                    spec=spec,
                    raw_body=tiny_spec,
                    idempotency_key="same-key",
                    default_max_attempts=3,
                )
                results.append((job.id, created))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len({job_id for job_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len(client.get("/api/v1/jobs", headers=alice).json()["jobs"]) == 1


def test_overlong_idempotency_key_is_refused(client, alice, tiny_spec):
    r = client.post("/api/v1/jobs", json=tiny_spec, headers={**alice, "Idempotency-Key": "k" * 201})
    assert_problem(r, 422, "header.Idempotency-Key")


def test_docs_examples_are_accepted(client, alice):
    for spec in (TRAIN_EXAMPLE, PIPELINE_EXAMPLE):
        job = submit(client, alice, spec)
        assert job["kind"] == spec["kind"]
    with open("examples/train_digits.json") as f:
        submit(client, alice, json.load(f))


# ------------------------------------------------------------------------ validation
def _mutate(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

INVALID_SPECS = [
    # (what, path to change, new value, field the answer must name, words in its message)
    ("unknown top-level field", "colour", "blue", "colour", "unknown field"),
    ("unknown nested field", "train.dataset.flavour", 1, "train.dataset.flavour", "unknown field"),
    ("unknown arch", "model.arch", "resnet9000", "model.arch", "resnet18"),
    ("unknown dataset", "train.dataset.name", "nosuchset", "train.dataset.name", "digits"),
    ("class the dataset lacks", "train.dataset.classes", [0, 12], "train.dataset.classes", "12"),
    ("negative epochs", "train.epochs", -3, "train.epochs", "greater than"),
    ("zero epochs", "train.epochs", 0, "train.epochs", "greater than"),
    ("epochs not a number", "train.epochs", "many", "train.epochs", "integer"),
    ("negative lr", "train.optimizer", {"lr": -1}, "train.optimizer.lr", "greater than"),
    ("wrong kind", "kind", "bake", "kind", "bake"),
    ("missing kind", "kind", _DELETE, "kind", "one of pipeline, distill, finetune, train"),
    ("missing stage", "train", _DELETE, "train", "required"),
    ("missing dataset", "train.dataset", _DELETE, "train.dataset", "required"),
    ("missing model", "model", _DELETE, "model", "required"),
    ("missing arch", "model.arch", _DELETE, "model.arch", "required when source"),
    ("missing dataset name", "train.dataset.name", _DELETE, "train.dataset.name", "name"),
    ("weights without torchvision", "model.weights", "IMAGENET1K_V1", "model.weights", "only"),
    (
        "synthetic field on digits",
        "train.dataset.num_classes",
        3,
        "train.dataset.num_classes",
        "synthetic",
    ),
    ("unknown upload", "train.dataset", {"id": "no-such-upload"}, "train.dataset.id", "no dataset"),
    ("width on a resnet", "model", {"arch": "resnet18", "width": 0.5}, "model.width", "small_cnn"),
    (
        "negative int8 budget",
        "export",
        {"int8": True, "int8_max_drop": -0.5},
        "export.int8_max_drop",
        "greater than or equal to 0",
    ),
    ("no calibration", "export", {"calibration_samples": 0}, "export.calibration_samples", "1"),
    ("unknown export field", "export", {"int4": True}, "export.int4", "unknown field"),
    # Postgres cannot store NUL in the spec (these were 500s there).
    ("NUL in the name", "name", "tiny\x00", "name", "NUL"),
    ("NUL in a class", "train.dataset.classes", ["a\x00"], "train.dataset.classes", "NUL"),
    # 10M synthetic images at 224 pixels are 1.5 TB: the worker ran out of memory and died.
    (
        "synthetic set too large to generate",
        "train.dataset",
        {"name": "synthetic", "num_samples": 10_000_000, "image_size": 224},
        "train.dataset.num_samples",
        "STILLHOUSE_MAX_UPLOAD_BYTES",
    ),
    # CIFAR-100 resized to 224 pixels is 7.5 GB of uint8.
    (
        "torchvision set resized too large",
        "train.dataset",
        {"name": "torchvision:CIFAR100", "image_size": 224},
        "train.dataset.image_size",
        "STILLHOUSE_MAX_UPLOAD_BYTES",
    ),
    (
        "torchvision class name",
        "train.dataset",
        {"name": "torchvision:MNIST", "classes": ["0 - zero"]},
        "train.dataset.classes",
        "0, 1, 2",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [case[1:] for case in INVALID_SPECS],
    ids=[case[0] for case in INVALID_SPECS],
)
def test_invalid_spec_is_refused_with_the_field_named(
    client, alice, tiny_spec, path, value, field, words
):
    _mutate(tiny_spec, path, value)
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    body = assert_problem(r, 422, field)
    message = next(e["message"] for e in body["errors"] if e["field"] == field)
    assert words.lower() in message.lower(), body
    # A refused spec is never stored, so no worker can see it.
    assert client.get("/api/v1/jobs", headers=alice).json()["jobs"] == []


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_numbers_are_refused(client, alice, tiny_spec, number):
    # Python's JSON reader takes these; Postgres refuses them in the stored spec (was a 500).
    tiny_spec["train"]["scheduler"] = {"warmup_epochs": "__N__"}
    body = json.dumps(tiny_spec).replace('"__N__"', number)
    r = client.post(
        "/api/v1/jobs", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert_problem(r, 422, "train.scheduler.warmup_epochs")
    assert client.get("/api/v1/jobs", headers=alice).json()["jobs"] == []


def test_every_problem_in_a_spec_is_reported_at_once(client, alice, tiny_spec):
    tiny_spec["model"]["arch"] = "nope"
    tiny_spec["train"]["dataset"]["classes"] = [0, 99]
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    assert_problem(r, 422, "model.arch", "train.dataset.classes")


def test_a_problem_of_the_target_is_reported_once(client, alice, tiny_spec):
    # The default evaluation set is derived from train.dataset: one problem, one error.
    tiny_spec["train"]["dataset"]["classes"] = [0, 12]
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    body = assert_problem(r, 422, "train.dataset.classes")
    assert [e["field"] for e in body["errors"]] == ["train.dataset.classes"]
    # An evaluation set the user wrote is checked, and named, on its own.
    tiny_spec["train"]["dataset"]["classes"] = [0, 1]
    tiny_spec["evaluate"] = {"dataset": {"name": "digits", "classes": [0, 12], "split": "test"}}
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    body = assert_problem(r, 422, "evaluate.dataset.classes")
    assert [e["field"] for e in body["errors"]] == ["evaluate.dataset.classes"]


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"[1, 2]", "body"), (b"", "body")],
    ids=["malformed", "not an object", "empty"],
)
def test_a_body_that_is_not_a_spec_is_refused(client, alice, body, field):
    r = client.post(
        "/api/v1/jobs", content=body, headers={**alice, "Content-Type": "application/json"}
    )
    assert_problem(r, 422, field)


def test_an_oversized_spec_body_is_413_and_nothing_is_stored(client, alice, tiny_spec, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_MAX_SPEC_BYTES", "2048")
    get_settings.cache_clear()
    padded = {**tiny_spec, "name": "x" * 4000}
    # Refused on its Content-Length, before the body is read.
    r = client.post("/api/v1/jobs", json=padded, headers=alice)
    body = assert_problem(r, 413, "body")
    assert "2048" in body["detail"]
    # Without a Content-Length (chunked), refused as the bytes pass the bound.
    raw = json.dumps(padded).encode()
    chunks = iter([raw[:1000], raw[1000:3000], raw[3000:]])
    r = client.post(
        "/api/v1/jobs", content=chunks, headers={**alice, "content-type": "application/json"}
    )
    assert_problem(r, 413, "body")
    assert client.get("/api/v1/jobs", headers=alice).json()["jobs"] == []
    # A spec within the bound, chunked or not, is read whole and accepted.
    raw = json.dumps(tiny_spec).encode()
    assert len(raw) < 2048
    r = client.post(
        "/api/v1/jobs",
        content=iter([raw[:100], raw[100:]]),
        headers={**alice, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/jobs", content=raw, headers={**alice, "content-length": "ten"})
    assert_problem(r, 400, "header.Content-Length")


# ------------------------------------------------------------------------------ auth
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sh_not-a-key", "Basic YWxpY2U6c2VjcmV0", "Bearer "],
    ids=["none", "unknown key", "basic", "empty bearer"],
)
def test_api_routes_need_a_valid_key(client, alice, tiny_spec, authorization):
    job = submit(client, alice, tiny_spec)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", f"/api/v1/jobs/{job['id']}"),
        ("POST", f"/api/v1/jobs/{job['id']}:cancel"),
        ("DELETE", f"/api/v1/jobs/{job['id']}"),
        ("GET", f"/api/v1/jobs/{job['id']}/events"),
        ("GET", f"/api/v1/jobs/{job['id']}/metrics"),
    ):
        r = client.request(method, path, headers=headers, json=tiny_spec)
        assert_problem(r, 401)
        assert r.headers["WWW-Authenticate"] == "Bearer", (method, path)
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=alice).json()["state"] == "QUEUED"


def test_another_owners_job_answers_404(client, alice, bob, tiny_spec):
    job = submit(client, alice, tiny_spec)
    for method, path in (
        ("GET", f"/api/v1/jobs/{job['id']}"),
        ("POST", f"/api/v1/jobs/{job['id']}:cancel"),
        ("DELETE", f"/api/v1/jobs/{job['id']}"),
        ("GET", f"/api/v1/jobs/{job['id']}/events"),
        ("GET", f"/api/v1/jobs/{job['id']}/metrics"),
    ):
        theirs = client.request(method, path, headers=bob)
        body = assert_problem(theirs, 404)
        # Exactly as for an id that does not exist: nothing tells bob the job is there.
        missing = client.request(method, path.replace(job["id"], "no-such-id"), headers=bob)
        assert_problem(missing, 404)
        assert body["type"] == missing.json()["type"] and body["title"] == missing.json()["title"]
    assert client.get("/api/v1/jobs", headers=bob).json() == {"jobs": [], "next_page_token": None}
    # Bob's attempts changed nothing.
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=alice).json()["state"] == "QUEUED"


def test_ids_with_a_nul_answer_404_on_every_route(client, alice, tiny_spec):
    # Postgres refuses NUL even in a WHERE clause: these were 500s there.
    submit(client, alice, tiny_spec)
    for method, path in (
        ("GET", "/api/v1/jobs/a%00b"),
        ("POST", "/api/v1/jobs/a%00b:cancel"),
        ("DELETE", "/api/v1/jobs/a%00b"),
        ("GET", "/api/v1/jobs/a%00b/events"),
        ("GET", "/api/v1/jobs/a%00b/metrics"),
        ("GET", "/api/v1/jobs/a%00b/plots/learning_curves.png"),
        ("GET", "/api/v1/datasets/a%00b"),
        ("DELETE", "/api/v1/datasets/a%00b"),
        ("GET", "/api/v1/checkpoints/a%00b"),
        ("DELETE", "/api/v1/checkpoints/a%00b"),
        ("GET", "/api/v1/models/a%00b"),
        ("DELETE", "/api/v1/models/a%00b"),
        ("GET", "/api/v1/models/a%00b/artifacts/model.json"),
        ("POST", "/api/v1/models/a%00b/predict"),
    ):
        assert_problem(client.request(method, path, headers=alice), 404)
    for method, path in (
        ("GET", "/v2/models/a%00b"),
        ("GET", "/v2/models/a%00b/ready"),
        ("POST", "/v2/models/a%00b/infer"),
    ):
        r = client.request(method, path, headers=alice)
        assert r.status_code == 404 and "error" in r.json(), r.text


def test_unknown_route_is_problem_json(client, alice):
    assert_problem(client.get("/api/v1/no-such-thing", headers=alice), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # Two routes share the path: the header lists both's methods.
        ("PUT", "/api/v1/jobs", "GET, POST"),
        ("POST", "/api/v1/jobs/some-id", "DELETE, GET"),
        # Static files (a mount matches every method): they serve reads only.
        ("POST", "/static-offline-docs/swagger-ui.css", "GET, HEAD"),
    ],
)
def test_405_lists_exactly_the_methods_served(client, alice, method, path, allow):
    r = client.request(method, path, headers=alice)
    assert_problem(r, 405)
    assert r.headers["allow"] == allow


# ---------------------------------------------------------------------- list, paging
def test_list_filters_by_state_and_kind(client, alice, bob, tiny_spec):
    a = submit(client, alice, tiny_spec)
    b = submit(client, alice, tiny_spec)
    p = submit(client, alice, PIPELINE_EXAMPLE)
    submit(client, bob, tiny_spec)
    client.post(f"/api/v1/jobs/{b['id']}:cancel", headers=alice)

    def ids(query: str) -> list[str]:
        r = client.get(f"/api/v1/jobs{query}", headers=alice)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["jobs"]]

    assert ids("") == [p["id"], b["id"], a["id"]]  # newest first, only alice's
    assert ids("?state=QUEUED") == [p["id"], a["id"]]
    assert ids("?state=CANCELLED") == [b["id"]]
    assert ids("?kind=pipeline") == [p["id"]]
    assert ids("?kind=train&state=QUEUED") == [a["id"]]
    assert ids("?state=RUNNING") == []
    assert_problem(client.get("/api/v1/jobs?state=DONE", headers=alice), 422, "query.state")
    assert_problem(client.get("/api/v1/jobs?kind=bake", headers=alice), 422, "query.kind")


def test_paging_walks_every_job_once(client, alice, tiny_spec):
    created = [submit(client, alice, tiny_spec)["id"] for _ in range(7)]
    # Two pairs share a timestamp: the token must order ties by id, not skip or repeat them.
    same = utcnow() - timedelta(minutes=5)
    with get_write_engine().begin() as conn:
        conn.execute(update(Job).where(Job.id.in_(created[1:3])).values(created_at=same))
        conn.execute(update(Job).where(Job.id.in_(created[4:6])).values(created_at=same))

    seen: list[str] = []
    pages = 0
    token = None
    while True:
        params: dict[str, Any] = {"page_size": 3}
        if token:
            params["page_token"] = token
        r = client.get("/api/v1/jobs", params=params, headers=alice)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["jobs"]) <= 3
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))
    everything = client.get("/api/v1/jobs", params={"page_size": 500}, headers=alice).json()
    assert [j["id"] for j in everything["jobs"]] == seen
    assert everything["next_page_token"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_token=not-a-token", "query.page_token"),
        ("page_token=eyJ4IjogMX0", "query.page_token"),  # valid base64 JSON, wrong content
        # Well-formed, but a naive time (was a 500: naive datetime given to a UTC column) ...
        ("page_token=" + encode_token(datetime(2020, 1, 1), "x"), "query.page_token"),
        # ... and an id with a NUL (was a 500 on Postgres: text cannot contain NUL).
        (
            "page_token=" + encode_token(datetime(2020, 1, 1, tzinfo=UTC), "\x00"),
            "query.page_token",
        ),
        ("page_size=0", "query.page_size"),
        ("page_size=501", "query.page_size"),
        ("page_size=ten", "query.page_size"),
    ],
)
def test_bad_paging_parameters_are_422(client, alice, query, field):
    assert_problem(client.get(f"/api/v1/jobs?{query}", headers=alice), 422, field)


# ---------------------------------------------------------------------- get, cancel
def test_get_unknown_job_is_404(client, alice):
    body = assert_problem(client.get("/api/v1/jobs/does-not-exist", headers=alice), 404)
    assert "does-not-exist" in body["detail"]


def test_cancel_queued_job(client, alice, tiny_spec):
    job = submit(client, alice, tiny_spec)
    r = client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice)
    assert r.status_code == 202, r.text
    cancelled = r.json()
    assert cancelled["state"] == "CANCELLED" and cancelled["finished_at"] is not None
    # Cancelling again changes nothing and is not an error.
    again = client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice)
    assert again.status_code == 202 and again.json() == cancelled
    # A cancelled job is never claimed.
    assert job_states.claim_next(get_write_engine(), "test-worker") is None
    events = parse_sse(client.get(f"/api/v1/jobs/{job['id']}/events", headers=alice).text)
    assert [(t, d["state"]) for _, t, d in events] == [("state", "QUEUED"), ("state", "CANCELLED")]


def test_cancel_running_job_asks_the_worker(client, alice, tiny_spec):
    job = submit(client, alice, tiny_spec)
    claim(job["id"])
    r = client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice)
    assert r.status_code == 202 and r.json()["state"] == "CANCELLING"
    status = job_states.heartbeat(get_write_engine(), job["id"], "test-worker", write=True)
    assert status.owned and status.cancel_requested
    assert client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice).json()["state"] == (
        "CANCELLING"
    )
    assert job_states.finish(get_write_engine(), job["id"], "test-worker", state=JobState.CANCELLED)
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=alice).json()["state"] == "CANCELLED"


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
def test_cancel_finished_job_is_409(client, alice, tiny_spec, state):
    job = submit(client, alice, tiny_spec)
    run_to(job["id"], state)
    body = assert_problem(client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice), 409)
    assert state.value in body["detail"]
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=alice).json()["state"] == state.value


# ---------------------------------------------------------------------------- delete
def test_delete_refuses_unfinished_jobs(client, alice, tiny_spec):
    queued = submit(client, alice, tiny_spec)
    assert_problem(client.delete(f"/api/v1/jobs/{queued['id']}", headers=alice), 409)
    assert client.get(f"/api/v1/jobs/{queued['id']}", headers=alice).status_code == 200
    claim(queued["id"])
    assert_problem(client.delete(f"/api/v1/jobs/{queued['id']}", headers=alice), 409)
    client.post(f"/api/v1/jobs/{queued['id']}:cancel", headers=alice)  # now CANCELLING
    assert_problem(client.delete(f"/api/v1/jobs/{queued['id']}", headers=alice), 409)


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_delete_finished_job(client, alice, tiny_spec, settings, how):
    job = submit(client, alice, tiny_spec)
    if how == "cancelled":
        client.post(f"/api/v1/jobs/{job['id']}:cancel", headers=alice)
    else:
        run_to(job["id"], JobState(how.upper()))
    checkpoints = settings.artifact_dir / "jobs" / job["id"] / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "train.fit.pt").write_bytes(b"x")
    r = client.delete(f"/api/v1/jobs/{job['id']}", headers=alice)
    assert r.status_code == 204 and r.content == b""
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}", headers=alice), 404)
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}/events", headers=alice), 404)
    assert_problem(client.delete(f"/api/v1/jobs/{job['id']}", headers=alice), 404)
    assert not checkpoints.exists()


# ------------------------------------------------------------------ events, metrics
def _job_with_history(client, alice, tiny_spec) -> str:
    """A finished job with two epochs of metrics and a progress event, written by a Reporter."""
    job = submit(client, alice, tiny_spec)
    claim(job["id"])
    reporter = Reporter(
        get_write_engine(),
        job_id=job["id"],
        worker_id="test-worker",
        control=JobControl(),
        interval_seconds=0.0,
    )
    reporter.stage("train", epochs=2)
    for epoch in (1, 2):
        reporter.progress(
            Progress(
                stage="train",
                epoch=epoch,
                epochs=2,
                step=epoch * 10,
                steps=20,
                loss=lambda: 0.5,
                eta_seconds=10.0 * (2 - epoch),
            )
        )
        reporter.metric(
            stage="train", epoch=epoch, values={"train_loss": 1.0 / epoch, "val_accuracy": 0.4}
        )
    reporter.log("almost there")
    assert job_states.finish(get_write_engine(), job["id"], "test-worker", state=JobState.SUCCEEDED)
    return job["id"]


def test_metric_history(client, alice, bob, tiny_spec):
    job_id = _job_with_history(client, alice, tiny_spec)
    r = client.get(f"/api/v1/jobs/{job_id}/metrics", headers=alice)
    assert r.status_code == 200, r.text
    history = r.json()
    assert history["job_id"] == job_id
    points = history["metrics"]
    assert [(p["stage"], p["epoch"]) for p in points] == [("train", 1), ("train", 2)]
    assert points[0]["values"] == {"train_loss": 1.0, "val_accuracy": 0.4}
    assert points[0]["event_id"] < points[1]["event_id"]
    assert points[0]["time"] <= points[1]["time"]
    assert history["stages"] == {
        "train": [
            {"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.4},
            {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.4},
        ]
    }
    job = client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()
    assert job["metrics"] == {"stage": "train", "epoch": 2, "train_loss": 0.5, "val_accuracy": 0.4}
    assert job["progress"]["epoch"] == 2 and job["progress"]["fraction"] == 1.0

    empty = submit(client, alice, tiny_spec)
    r = client.get(f"/api/v1/jobs/{empty['id']}/metrics", headers=alice)
    assert r.json() == {"job_id": empty["id"], "metrics": [], "stages": {}}


def test_plots_of_a_job(client, alice, bob, tiny_spec):
    job_id = _job_with_history(client, alice, tiny_spec)
    url = f"/api/v1/jobs/{job_id}/plots"
    png = client.get(f"{url}/learning_curves.png", headers=alice)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = client.get(f"{url}/learning_curves.svg", headers=alice)
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert_problem(client.get(f"{url}/pareto.png", headers=alice), 404)
    assert_problem(client.get(f"{url}/learning_curves.png", headers=bob), 404)
    empty = submit(client, alice, tiny_spec)
    assert_problem(
        client.get(f"/api/v1/jobs/{empty['id']}/plots/learning_curves.svg", headers=alice), 404
    )
    # Its queries and drawing are blocking calls: the route must run in the thread pool,
    # not on the event loop (it was an `async def` calling them directly).
    from app.api.routes.plots import job_plot

    assert not inspect.iscoroutinefunction(job_plot)


def test_event_stream_of_a_finished_job_resumes_by_id(client, alice, tiny_spec):
    job_id = _job_with_history(client, alice, tiny_spec)
    r = client.get(f"/api/v1/jobs/{job_id}/events", headers=alice)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    ids = [i for i, _, _ in events]
    assert ids == sorted(set(ids)), "event ids must strictly increase"
    types = [t for _, t, _ in events]
    assert types[0] == "state" and events[0][2]["state"] == "QUEUED"
    assert events[1][2] == {"state": "RUNNING", "attempt": 1, "worker": "test-worker"}
    assert {"progress", "metric", "log"} <= set(types)
    assert events[-1][1:] == ("state", {"state": "SUCCEEDED"})

    middle = ids[len(ids) // 2]
    resumed = client.get(
        f"/api/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": str(middle)}
    )
    assert parse_sse(resumed.text) == [e for e in events if e[0] > middle]
    after = client.get(f"/api/v1/jobs/{job_id}/events?after={middle}", headers=alice)
    assert parse_sse(after.text) == [e for e in events if e[0] > middle]
    assert (
        parse_sse(
            client.get(
                f"/api/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": str(ids[-1])}
            ).text
        )
        == []
    )

    bad = client.get(f"/api/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": "x"})
    assert_problem(bad, 422, "header.Last-Event-ID")
    # Past a 64-bit id: a 422 up front, not an overflow in the database mid-stream.
    huge = str(2**80)
    bad = client.get(f"/api/v1/jobs/{job_id}/events", headers={**alice, "Last-Event-ID": huge})
    assert_problem(bad, 422, "header.Last-Event-ID")
    bad = client.get(f"/api/v1/jobs/{job_id}/events?after={huge}", headers=alice)
    assert_problem(bad, 422, "query.after")


# ------------------------------------------------------------------------------ docs
def test_openapi_has_an_example_for_the_job_body(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    body = r.json()["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["examples"]
    assert {"train", "pipeline", "distill", "finetune"} <= set(examples)
    assert examples["train"]["value"]["kind"] == "train"
    assert client.get("/docs").status_code == 200


def test_an_unknown_loss_is_refused_with_the_registry_names(client, alice):
    spec = {
        "kind": "distill",
        "teacher": {
            "arch": "small_cnn",
            "source": "train",
            "train": {"dataset": {"name": "digits"}},
        },
        "student": {"arch": "small_cnn", "width": 0.25},
        "distill": {"dataset": {"name": "digits"}, "loss": {"type": "kll"}},
    }
    r = client.post("/api/v1/jobs", json=spec, headers=alice)
    body = assert_problem(r, 422, "distill.loss.type")
    assert "did you mean kl? known: dist, dkd, hint, kl, mse" in body["errors"][0]["message"]
    assert client.get("/api/v1/jobs", headers=alice).json()["jobs"] == []
