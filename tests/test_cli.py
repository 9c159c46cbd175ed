"""The `stillhouse` command line: keys, migrations, and the commands the contract names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from tests.helpers import tiny_train_spec

BIN = Path(sys.executable).parent / "stillhouse"
CONTRACT_COMMANDS = (
    "serve",
    "api",
    "worker",
    "migrate",
    "keys",
    "submit",
    "status",
    "predict",
    "jobs",
    "cancel",
    "logs",
    "models",
)


def stillhouse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLHOUSE_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def test_keys_create_prints_a_key_that_authenticates(env, client, tiny_spec):
    done = stillhouse("keys", "create", "--owner", "carol", env=env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n", "stdout holds the key and nothing else"
    assert key.startswith("sh_") and len(key) > 30

    headers = {"Authorization": f"Bearer {key}"}
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=headers)
    assert r.status_code == 201, r.text
    # The key is carol's: it sees carol's jobs, and a second key of hers sees the same.
    again = stillhouse("keys", "create", "--owner", "carol", env=env).stdout.strip()
    assert again != key
    listed = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {again}"}).json()
    assert [j["id"] for j in listed["jobs"]] == [r.json()["id"]]
    # Only a hash is stored: the key itself is nowhere in the database.
    from app.db import get_engine

    with get_engine().connect() as conn:
        stored = conn.exec_driver_sql("SELECT key_hash, prefix FROM api_keys").all()
    assert stored and all(key not in (h, p) and again not in (h, p) for h, p in stored)


def test_migrate_creates_the_tables_on_a_fresh_sqlite_file(tmp_path):
    db = tmp_path / "nested" / "fresh.db"
    url = f"sqlite:///{db}"
    done = stillhouse("migrate", env={"STILLHOUSE_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "jobs", "job_events", "models", "api_keys"} <= tables
    # Running it again is harmless.
    assert stillhouse("migrate", env={"STILLHOUSE_DATABASE_URL": url}).returncode == 0


def test_help_lists_every_command_of_the_contract():
    done = stillhouse("--help")
    assert done.returncode == 0, done.stderr
    for command in CONTRACT_COMMANDS:
        assert command in done.stdout, command
    for command, flags in (
        ("serve", ("--host", "--port")),
        ("api", ("--host", "--port")),
        ("worker", ("--device",)),
        ("submit", ("--wait",)),
        ("status", ("--json",)),
        ("jobs", ("--state", "--kind", "--limit", "--page-token", "--json")),
        ("models", ("--limit", "--page-token", "--json")),
        ("cancel", ("JOB_ID",)),
        ("logs", ("JOB_ID",)),
    ):
        sub = stillhouse(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert all(flag in sub.stdout for flag in flags), (command, sub.stdout)
    keys = stillhouse("keys", "create", "--help")
    assert keys.returncode == 0 and "--owner" in keys.stdout
    keys = stillhouse("keys", "list", "--help")
    assert keys.returncode == 0 and "--json" in keys.stdout and "--owner" in keys.stdout
    keys = stillhouse("keys", "revoke", "--help")
    assert keys.returncode == 0 and "KEY_PREFIX" in keys.stdout


def test_client_commands_without_a_key_fail_clearly(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    done = stillhouse("submit", str(spec), env={"STILLHOUSE_API_URL": "http://127.0.0.1:9"})
    assert done.returncode == 1
    assert "STILLHOUSE_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_keys_create_refuses_clearly(tmp_path, sqlite_url):
    unmigrated = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    done = stillhouse("keys", "create", "--owner", "x", env={"STILLHOUSE_DATABASE_URL": unmigrated})
    assert done.returncode == 1 and done.stdout == ""
    assert "stillhouse migrate" in done.stderr and "Traceback" not in done.stderr

    done = stillhouse("keys", "create", "--owner", "", env={"STILLHOUSE_DATABASE_URL": sqlite_url})
    assert done.returncode == 2 and done.stdout == ""
    assert "--owner" in done.stderr and "Traceback" not in done.stderr


def test_following_events_gives_up_when_the_server_stays_gone(monkeypatch):
    """A refused connection is retried, a bounded number of times, then raised."""
    import httpx

    from app import client as client_module

    monkeypatch.setattr(client_module, "RECONNECT_ATTEMPTS", 3)
    monkeypatch.setattr(client_module, "RECONNECT_PAUSE_SECONDS", 0.01)
    # Port 9 (discard) has no listener here: every try is refused.
    api = client_module.Client("http://127.0.0.1:9", "key")
    tries = []
    real_stream = api.http.stream

    def counting_stream(*args, **kwargs):
        tries.append(args)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(api.http, "stream", counting_stream)
    with pytest.raises(httpx.ConnectError):
        list(api.events("job-1"))
    assert len(tries) == 3


# ------------------------------------------------------------------------------ keys
def test_keys_list_and_revoke_and_the_revoked_key_answers_401(env, client):
    carol = stillhouse("keys", "create", "--owner", "carol", env=env).stdout.strip()
    dave = stillhouse("keys", "create", "--owner", "dave", env=env).stdout.strip()
    listed = stillhouse("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["PREFIX", "OWNER", "CREATED", "REVOKED"]
    # Newest first; the prefix is shown, the key never.
    assert [r.split()[:2] for r in rows] == [[dave[:10], "dave"], [carol[:10], "carol"]]
    assert carol not in listed.stdout and dave not in listed.stdout
    assert all(r.split()[-1] == "-" for r in rows)

    headers = {"Authorization": f"Bearer {carol}"}
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    revoked = stillhouse("keys", "revoke", carol[:10], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == f"revoked {carol[:10]} (owner carol)\n"
    # Ordinary routes read the key on every request: refused at once.
    r = client.get("/api/v1/jobs", headers=headers)
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    assert (
        client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {dave}"}).status_code == 200
    )

    as_json = json.loads(stillhouse("keys", "list", "--json", env=env).stdout)
    assert [(k["prefix"], k["owner"]) for k in as_json] == [
        (dave[:10], "dave"),
        (carol[:10], "carol"),
    ]
    assert as_json[0]["revoked_at"] is None and as_json[1]["revoked_at"] is not None
    assert all(set(k) == {"prefix", "owner", "created_at", "revoked_at"} for k in as_json)
    only_dave = json.loads(stillhouse("keys", "list", "--owner", "dave", "--json", env=env).stdout)
    assert [k["owner"] for k in only_dave] == ["dave"]

    again = stillhouse("keys", "revoke", carol[:10], env=env)
    assert again.returncode == 0 and "already revoked" in again.stdout


def test_keys_revoke_refuses_a_prefix_that_matches_no_key_or_several(env, client):
    from sqlalchemy import update

    from app.db import get_write_engine
    from app.models import ApiKey

    missing = stillhouse("keys", "revoke", "sh_nothing", env=env)
    assert missing.returncode == 2 and missing.stdout == ""
    assert "no key has the prefix 'sh_nothing'" in missing.stderr
    assert "Traceback" not in missing.stderr

    # Two keys that share a listed prefix (unlikely with 7 random characters, not impossible).
    first = stillhouse("keys", "create", "--owner", "erin", env=env).stdout.strip()
    second = stillhouse("keys", "create", "--owner", "frank", env=env).stdout.strip()
    with get_write_engine().begin() as conn:
        conn.execute(update(ApiKey).values(prefix=first[:10]))
    both = stillhouse("keys", "revoke", first[:10], env=env)
    assert both.returncode == 2 and both.stdout == ""
    assert "2 keys have the prefix" in both.stderr and "erin, frank" in both.stderr
    for key in (first, second):
        assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}).is_success
    # The whole key names one of them.
    one = stillhouse("keys", "revoke", second, env=env)
    assert one.returncode == 0 and "owner frank" in one.stdout and second not in one.stdout
    assert (
        client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    )
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {first}"}).is_success


# ----------------------------------------------------------- client, in process
def api_client(client, headers: dict[str, str]):
    """The CLI's Client, talking to the real app in this process (the TestClient is an
    httpx.Client, as the Client's own is)."""
    from app.client import Client

    api = Client("http://testserver", "unused")
    client.headers.update(headers)
    api.http = client
    return api


def test_listing_follows_page_tokens_and_errors_read_as_one_line(client, alice, tiny_spec):
    from app.client import ClientError

    api = api_client(client, alice)
    ids = [api.submit({**tiny_spec, "name": f"job-{i}"})["id"] for i in range(3)]
    first, token = api.listing("/api/v1/jobs", "jobs", limit=2)
    assert [j["id"] for j in first] == ids[::-1][:2] and token
    rest, end = api.listing("/api/v1/jobs", "jobs", limit=50, page_token=token)
    assert [j["id"] for j in rest] == ids[:1] and end is None
    everything, end = api.listing("/api/v1/jobs", "jobs", limit=50, state="QUEUED", kind="train")
    assert len(everything) == 3 and end is None
    assert api.listing("/api/v1/jobs", "jobs", limit=50, kind="pipeline") == ([], None)

    with pytest.raises(ClientError) as missing:
        api.job("no-such-job")
    assert str(missing.value) == "HTTP 404: job no-such-job does not exist"
    with pytest.raises(ClientError) as invalid:
        api.submit({**tiny_spec, "train": {**tiny_spec["train"], "epochs": -1}})
    assert str(invalid.value).startswith("HTTP 422: ") and "epochs" in str(invalid.value)
    assert "\n" not in str(invalid.value)


def test_stage_plan_follows_the_spec():
    from app.job_progress import stage_plan
    from tests.helpers import tiny_pipeline_spec

    def names(spec):
        plan = stage_plan(spec)
        return [name for name, _ in plan.stages], plan.exact

    assert stage_plan(tiny_train_spec(epochs=4)).stages == (("train", 4),)
    pipeline = tiny_pipeline_spec(baseline=True, strategy="distill_then_finetune")
    assert stage_plan(pipeline).stages == (
        ("teacher", 2),
        ("distill", 2),
        ("finetune", 3),
        ("teacher_finetune", 3),
        ("baseline", 3),
    )
    # The report's teacher fine-tuning is skipped for a teacher of the target's classes.
    assert not stage_plan(pipeline).exact
    unmeasured = tiny_pipeline_spec(
        baseline=False, teacher_on_target=False, strategy="distill_then_finetune"
    )
    assert names(unmeasured) == (["teacher", "distill", "finetune"], True)
    adapted = tiny_pipeline_spec(strategy="finetune_then_distill", baseline=False)
    assert names(adapted) == (["teacher", "teacher_finetune", "distill", "finetune"], True)
    search = tiny_pipeline_spec(
        baseline=False,
        strategy="finetune_then_distill",
        student={"candidates": [{"arch": "small_cnn", "width": w} for w in (0.25, 0.5)]},
    )
    assert names(search) == (
        [
            "teacher",
            "teacher_finetune",
            "distill.c0",
            "finetune.c0",
            "distill.c1",
            "finetune.c1",
        ],
        True,
    )
    # A budget may skip candidates: the count is an estimate.
    search["student"]["constraints"] = {"max_params": 10_000}
    assert names(search)[1] is False
    teacher = {"source": "train", "arch": "small_cnn", "train": {"epochs": 5}}
    assert stage_plan({"kind": "distill", "teacher": teacher, "distill": {"epochs": 7}}).stages == (
        ("teacher", 5),
        ("distill", 7),
    )
    loaded = {"source": "model", "model_id": "m"}
    assert names({"kind": "finetune", "teacher": loaded, "finetune": {}}) == (["finetune"], True)


def test_the_progress_line_speaks_for_the_whole_job(client, alice):
    """Events written by the worker's own Reporter, read back through the real event
    stream, make one line: stage n of N, and an ETA for the whole job marked "~"."""
    from app.core import job_states
    from app.db import get_write_engine
    from app.job_progress import JobProgress
    from tests.helpers import tiny_pipeline_spec
    from worker.control import JobControl
    from worker.events import Reporter
    from worker.train import Progress

    api = api_client(client, alice)
    # teacher 2 epochs, distill 2, finetune 3, the report's teacher_finetune 3, baseline 3.
    job = api.submit(tiny_pipeline_spec(baseline=True, strategy="distill_then_finetune"))
    engine = get_write_engine()
    assert job_states.claim_next(engine, "w").id == job["id"]
    control = JobControl()
    reporter = Reporter(
        engine, job_id=job["id"], worker_id="w", control=control, interval_seconds=0
    )

    def progress(stage: str, epoch: int, epochs: int, step: int, steps: int, eta: float) -> None:
        reporter.progress(Progress(stage, epoch, epochs, step, steps, lambda: 0.25, eta))

    reporter.stage("teacher", epochs=2)
    progress("teacher", 1, 2, 5, 10, eta=5.0)  # half done, 5 s left: 5 s an epoch
    reporter.metric(stage="teacher", epoch=1, values={"train_loss": 0.3, "val_accuracy": 0.9})
    reporter.stage("distill", epochs=2)
    progress("distill", 1, 2, 1, 4, eta=3.0)  # 1.5 epochs left in 3 s: 2 s an epoch
    reporter.stage("finetune", epochs=3)
    reporter.stage("teacher_finetune", epochs=3)
    reporter.stage("baseline", epochs=3)
    progress("baseline", 2, 3, 4, 6, eta=4.0)
    job_states.fail(engine, job["id"], "w", code="boom", message="it broke")

    line = JobProgress(job)
    lines = [line.line()]
    for event_type, data in api.events(job["id"]):
        line.update(event_type, data)
        lines.append(line.line())
    final = api.job(job["id"])
    line.finish(final)
    assert lines[0] == "QUEUED | waiting for a worker"
    # 5 s left of the teacher, then 2 + 3 + 3 + 3 epochs at its 5 s an epoch.
    assert "stage 1/~5 teacher | epoch 1/2 (50%) | loss 0.2500 | ETA ~1m00s" in lines
    assert (
        "stage 1/~5 teacher | epoch 1/2 (50%) | loss 0.2500 | val acc 0.900 | ETA ~1m00s" in lines
    )
    assert "stage 2/~5 distill | starting" in lines
    # 3 s left of the distillation, then 3 + 3 + 3 epochs at 2 s.
    assert "stage 2/~5 distill | epoch 1/2 (25%) | loss 0.2500 | ETA ~21s" in lines
    assert "stage 4/~5 teacher_finetune | starting" in lines
    # The last stage, but the plan proved inexact: still an estimate.
    assert "stage 5/~5 baseline | epoch 2/3 (67%) | loss 0.2500 | ETA ~4s" in lines
    assert line.line().startswith("FAILED | last stage 5/~5 baseline | boom: it broke")
    assert lines[-1] == "FAILED | last stage 5/~5 baseline"


def test_an_eta_that_covers_one_stage_says_so():
    from app.job_progress import JobProgress
    from tests.helpers import tiny_pipeline_spec

    spec = tiny_pipeline_spec(baseline=False, strategy="finetune_then_distill")
    line = JobProgress({"state": "RUNNING", "spec": spec})
    # First news of the stage near its end: no time per epoch to extrapolate from.
    line.update(
        "progress",
        {"stage": "teacher", "epoch": 2, "epochs": 2, "fraction": 0.95, "eta_seconds": 1.0},
    )
    assert line.line() == "stage 1/4 teacher | epoch 2/2 (95%) | stage ETA 1s"
    # The last stage of an exact plan: the worker's own measure, no "~".
    line.update(
        "progress",
        {"stage": "finetune", "epoch": 1, "epochs": 3, "fraction": 0.1, "eta_seconds": 9.0},
    )
    assert line.line() == "stage 4/4 finetune | epoch 1/3 (10%) | ETA 9s"
