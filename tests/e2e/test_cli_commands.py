"""The client commands as a user runs them: `stillhouse ...` subprocesses against the real
`stillhouse api` and worker processes of the e2e stack, on SQLite and on Postgres.

Their stdout is not a terminal here, so tables come out as plain columns and `submit
--wait` writes its progress line once, when the job ends.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import Stack
from tests.helpers import free_port, long_train_spec, tiny_train_spec, wait_for

STATE_WORDS = ("QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED", "stage ")


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`stillhouse ARGS` as the stack's user (its API and key, unless `env` says else)."""
    client_env = {
        "STILLHOUSE_API_URL": str(stack.client().base_url),
        "STILLHOUSE_API_KEY": stack.key,
        **env,
    }
    return stack.run_cli(*args, timeout=60, **client_env)


def table(stdout: str) -> list[list[str]]:
    """A plain table's rows (header first), split on runs of two or more spaces."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()]


def write_spec(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_submit_wait_writes_one_progress_line_and_no_library_logs(stack: Stack, tmp_path: Path):
    stack.workers(1)
    done = cli(stack, "submit", write_spec(tmp_path, tiny_train_spec(name="cli-wait")), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    first, _, rest = done.stdout.partition("\n")
    queued, final = json.loads(first), json.loads(rest)
    assert final["id"] == queued["id"] and final["state"] == "SUCCEEDED" and final["model_id"]

    assert "HTTP Request" not in done.stderr and "httpx" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith(STATE_WORDS)]
    assert len(progress) == 1, done.stderr
    assert progress[0].startswith("SUCCEEDED | accuracy ") and "took " in progress[0]

    # A refused spec: the problem's detail, on one line, and a non-zero exit.
    bad = tiny_train_spec()
    bad["train"]["epochs"] = -1
    refused = cli(stack, "submit", write_spec(tmp_path, bad), "--wait")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("ERROR: HTTP 422: ") and "epochs" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr


def test_logs_status_jobs_and_models_show_a_finished_job(stack: Stack):
    stack.workers(1)
    job = stack.submit(tiny_train_spec(name="cli-tiny"))

    logs = cli(stack, "logs", job["id"])
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0] == "state    QUEUED"
    assert any(line.startswith("state    RUNNING, attempt 1, worker ") for line in lines)
    assert any(line.startswith("progress train: training small_cnn") for line in lines)
    assert any(line.startswith("metric   train epoch 2: lr ") for line in lines), logs.stdout
    done = stack.job(job["id"])
    assert lines[-1] == f"state    SUCCEEDED, model id {done['model_id']}"

    status = cli(stack, "status", job["id"])
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[:2] == [
        f"job       {job['id']} (train, 'cli-tiny')",
        "state     SUCCEEDED, attempt 1 of 3",
    ]
    assert f"model     {done['model_id']}\n" in status.stdout
    assert "metrics   accuracy " in status.stdout and ", eval_samples " in status.stdout
    as_json = json.loads(cli(stack, "status", job["id"], "--json").stdout)
    assert as_json == done

    jobs = cli(stack, "jobs")
    assert jobs.returncode == 0, jobs.stderr
    header, *rows = table(jobs.stdout)
    assert header == ["ID", "NAME", "KIND", "STATE", "PROGRESS", "AGE"]
    assert [r[:5] for r in rows] == [[job["id"], "cli-tiny", "train", "SUCCEEDED", "-"]]

    models = cli(stack, "models")
    assert models.returncode == 0, models.stderr
    header, *rows = table(models.stdout)
    assert header == ["ID", "NAME", "ARCH", "PARAMS", "SIZE", "ACCURACY", "CREATED"]
    assert len(rows) == 1 and rows[0][:3] == [done["model_id"], "cli-tiny", "small_cnn"]
    accuracy = done["metrics"]["accuracy"]
    assert rows[0][5] == f"{accuracy:.3f}"
    listed = json.loads(cli(stack, "models", "--json").stdout)
    assert [m["id"] for m in listed["models"]] == [done["model_id"]]


def test_cancel_a_running_job_and_filter_and_page_the_list(stack: Stack):
    stack.workers(1)
    long = stack.submit(long_train_spec())
    stack.wait_state(long["id"], "RUNNING")
    wait_for("an epoch", lambda: (stack.job(long["id"])["progress"].get("epoch") or 0) >= 1, 30)

    running = cli(stack, "status", long["id"])
    assert "state     RUNNING" in running.stdout and "stage     1/1 train\n" in running.stdout
    assert "progress  epoch " in running.stdout and "ETA " in running.stdout
    listed = table(cli(stack, "jobs").stdout)
    assert listed[1][:4] == [long["id"], "long", "train", "RUNNING"]
    assert listed[1][4].startswith("1/1 train, epoch ")

    cancelled = cli(stack, "cancel", long["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout in (f"{long['id']} CANCELLING\n", f"{long['id']} CANCELLED\n")
    stack.wait_state(long["id"], "CANCELLED")
    assert cli(stack, "cancel", long["id"]).stdout == f"{long['id']} CANCELLED\n"

    tiny = stack.submit(tiny_train_spec())
    stack.wait_state(tiny["id"], "SUCCEEDED")
    finished = cli(stack, "cancel", tiny["id"])
    assert finished.returncode == 1 and finished.stderr.startswith("ERROR: HTTP 409: ")

    def ids(*args: str) -> tuple[list[str], str | None]:
        done = cli(stack, "jobs", *args, "--json")
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        return [j["id"] for j in body["jobs"]], body["next_page_token"]

    assert ids("--state", "cancelled") == ([long["id"]], None)
    assert ids("--kind", "pipeline") == ([], None)
    newest, token = ids("--limit", "1")
    assert newest == [tiny["id"]] and token
    assert ids("--limit", "1", "--page-token", token) == ([long["id"]], None)
    paged = cli(stack, "jobs", "--limit", "1")
    assert len(table(paged.stdout)) == 2 and f"--page-token {token}" in paged.stderr


def test_client_errors_are_one_line_and_exit_non_zero(stack: Stack):
    for args, env, expected in (
        (("status", "no-such-job"), {}, "ERROR: HTTP 404: job no-such-job does not exist"),
        (("logs", "no-such-job"), {}, "ERROR: HTTP 404: job no-such-job does not exist"),
        (("models",), {"STILLHOUSE_API_KEY": "sh_wrong"}, "ERROR: HTTP 401: invalid API key"),
        (
            ("jobs",),
            {"STILLHOUSE_API_URL": f"http://127.0.0.1:{free_port()}"},
            "ERROR: cannot reach the API at http://127.0.0.1:",
        ),
    ):
        done = cli(stack, *args, **env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == "" and done.stderr.startswith(expected), (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1, (args, done.stderr)
