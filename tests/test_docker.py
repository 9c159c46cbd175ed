"""The Docker images and docker-compose.yml agree with the settings and the command line.

No Docker engine runs in the test environment, so nothing here builds or starts a
container: the files are parsed and checked against `app.config.Settings` and the real
`stillhouse` argument parser. Each check is a small function that returns its problems, so
that the tests below can also show it catching a broken file.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from app.cli import build_parser
from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The server-side subcommands of API.md's "Command line" section: what a container runs.
SERVER_COMMANDS = {"serve", "api", "worker", "migrate"}
INSTRUCTIONS = {
    "FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE",
    "CMD", "ENTRYPOINT", "HEALTHCHECK", "LABEL", "VOLUME", "STOPSIGNAL", "SHELL", "ONBUILD",
}  # fmt: skip
SETTINGS_KEYS = {f"STILLHOUSE_{name.upper()}" for name in Settings.model_fields}
# Local state, caches and secrets stay out of the build context; the sources go in.
MUST_BE_IGNORED = (
    ".venv", ".git", "artifacts", "data", "bench/results", ".pytest_cache", ".ruff_cache",
    "stillhouse.db", "app/__pycache__", "worker/__pycache__/x.pyc", ".env", "stillhouse.egg-info",
)  # fmt: skip
NEEDED_BY_THE_BUILD = (
    "pyproject.toml", "README.md", "app", "worker", "alembic", "alembic/env.py",
    "worker/data.py", "docker/api.Dockerfile",
)  # fmt: skip


# --- compose helpers -----------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's `${NAME:-default}` as it comes out with nothing set in the environment.

    A variable without a default is an error here: compose would quietly put an empty
    string there, and `docker compose up` must work without a .env file.
    """
    if not isinstance(value, str):
        return value

    def default(match: re.Match[str]) -> str:
        if match.group("default") is None:
            raise ValueError(f"${{{match.group('name')}}} has no default")
        return match.group("default")

    return _VARIABLE.sub(default, value.replace("$$", "\0")).replace("\0", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(interpolate(value)) for key, value in env.items()}


def command_argvs(command: str | list[str]) -> list[list[str]]:
    """The argv of each program a compose `command` or Dockerfile CMD runs.

    `sh -c "a && b"` runs two; a string command is split the way compose splits it.
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if len(argv) == 3 and argv[0] in {"sh", "/bin/sh", "bash", "/bin/bash"} and argv[1] == "-c":
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def command_problem(argv: list[str]) -> str | None:
    """Why `argv` is not a server-side `stillhouse` command the real parser accepts."""
    if not argv or argv[0] != "stillhouse":
        return f"{argv} does not run `stillhouse`"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        return f"{argv}: the stillhouse parser rejects it"
    if args.command not in SERVER_COMMANDS:
        return f"{argv}: `{args.command}` is not one of {sorted(SERVER_COMMANDS)}"
    return None


def unknown_settings_keys(env: dict[str, str]) -> list[str]:
    return sorted(k for k in env if k.startswith("STILLHOUSE_") and k not in SETTINGS_KEYS)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for the short `volume:/path[:mode]` syntax."""
    found = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            found[entry["target"]] = entry.get("source", "")
        else:
            source, target = str(entry).split(":")[:2]
            found[target] = source
    return found


def stillhouse_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service built from this repository (everything but postgres)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in stillhouse_services(compose).items()
        if command_argvs(s["command"])[-1][1:2] == ["worker"]
    }


def artifact_mount_problems(compose: dict[str, Any]) -> list[str]:
    """api and every worker mount one shared named volume at STILLHOUSE_ARTIFACT_DIR."""
    problems = []
    volumes_used = set()
    for name in ["api", *worker_services(compose)]:
        service = compose["services"][name]
        artifact_dir = environment(service).get("STILLHOUSE_ARTIFACT_DIR")
        if artifact_dir is None:
            problems.append(f"{name} does not set STILLHOUSE_ARTIFACT_DIR")
            continue
        volume = mounts(service).get(artifact_dir)
        if volume is None:
            problems.append(f"{name} mounts nothing at {artifact_dir}")
            continue
        if volume not in (compose.get("volumes") or {}):
            problems.append(f"{name} mounts {volume!r}, which is not a named volume")
        volumes_used.add(volume)
    if len(volumes_used) > 1:
        problems.append(f"the artifact directory is on different volumes: {sorted(volumes_used)}")
    return problems


# --- Dockerfile parser ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """CMD/ENTRYPOINT in JSON (exec) form; the shell form would not get SIGTERM."""
        value = json.loads(self.args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: {self.keyword} is not a JSON list of strings")
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; raises ValueError on a bad one.

    Comment lines are dropped, also inside a continuation, as Docker does.
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if continued:
            continue
        keyword, _, args = " ".join(pending).partition(" ")
        pending = []
        if keyword.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword in {"CMD", "ENTRYPOINT"}:
            try:
                instruction.exec_form()
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {start}: {keyword} is not valid JSON: {exc}") from exc
        instructions.append(instruction)
    if pending:
        raise ValueError("the file ends inside a line continuation")
    if not instructions or instructions[0].keyword not in {"FROM", "ARG"}:
        raise ValueError("a Dockerfile starts with FROM (or ARG before FROM)")
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(
        ins.args.split("=", 1) for ins in instructions if ins.keyword == "ARG" and "=" in ins.args
    )


def base_image(instructions: list[Instruction]) -> str:
    """The first FROM's image with ARG defaults substituted (`${CUDA_VERSION}`)."""
    args = arg_defaults(instructions)
    image = next(ins for ins in instructions if ins.keyword == "FROM").args.split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_problems(instructions: list[Instruction]) -> list[str]:
    """What both images must do: run as non-root, install the whole repo editable, run a
    server command in exec form."""
    problems = []
    users = [ins.args for ins in instructions if ins.keyword == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("the image runs as root")
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    if not any(re.search(r"pip install\b.*(-e|--editable) \.(\s|$)", run) for run in runs):
        problems.append("no `pip install -e .`: alembic/ must stay next to app/")
    if not any(ins.keyword == "COPY" and ins.args.split() == [".", "."] for ins in instructions):
        problems.append("the whole repository is not copied (`COPY . .`)")
    cmds = [ins for ins in instructions if ins.keyword == "CMD"]
    if not cmds:
        problems.append("no CMD")
    else:
        problems += [
            p for argv in command_argvs(cmds[-1].exec_form()) if (p := command_problem(argv))
        ]
    return problems


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def api_image() -> list[Instruction]:
    return parse_dockerfile(API_DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def worker_image() -> list[Instruction]:
    return parse_dockerfile(WORKER_DOCKERFILE.read_text())


# --- compose -------------------------------------------------------------------------------


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "migrate", "api", "worker"} <= set(compose["services"])
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")


def test_every_variable_has_a_default(compose: dict[str, Any]) -> None:
    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        else:
            yield node

    for value in walk(compose):
        interpolate(value)  # raises on a ${VAR} without a default


def test_stillhouse_env_keys_are_settings(compose: dict[str, Any]) -> None:
    services = stillhouse_services(compose)
    assert {"migrate", "api", "worker"} <= set(services)
    for name, service in services.items():
        assert unknown_settings_keys(environment(service)) == [], name


def test_stillhouse_env_values_validate(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's environment builds a valid Settings (types, device names)."""
    for name, service in stillhouse_services(compose).items():
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("STILLHOUSE_")]:
                patch.delenv(key)
            for key, value in environment(service).items():
                patch.setenv(key, value)
            settings = Settings(_env_file=None)
        assert not settings.is_sqlite, f"{name} would use SQLite inside its container"
        assert settings.artifact_dir.is_absolute(), name


def test_database_url_points_at_the_postgres_service(compose: dict[str, Any]) -> None:
    postgres = environment(compose["services"]["postgres"])
    urls = {
        environment(s)["STILLHOUSE_DATABASE_URL"] for s in stillhouse_services(compose).values()
    }
    assert len(urls) == 1, f"the services disagree on the database: {urls}"
    url = make_url(urls.pop())
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres" and url.host in compose["services"]
    assert url.port in (None, 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


def test_commands_are_stillhouse_server_commands(compose: dict[str, Any]) -> None:
    subcommands = {}
    for name, service in stillhouse_services(compose).items():
        for argv in command_argvs(service["command"]):
            assert command_problem(argv) is None, command_problem(argv)
        subcommands[name] = command_argvs(service["command"])[-1][1]
    assert subcommands["api"] == "api"
    assert subcommands["worker"] == "worker"
    assert subcommands["migrate"] == "migrate"


def test_worker_device_flag_agrees_with_its_setting(compose: dict[str, Any]) -> None:
    for name, service in worker_services(compose).items():
        args = build_parser().parse_args(command_argvs(service["command"])[-1][1:])
        assert args.device == environment(service).get("STILLHOUSE_DEVICE", args.device), name


def test_migrations_run_once_before_api_and_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ["api", *worker_services(compose)]:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_artifacts_volume_is_shared_by_api_and_workers(compose: dict[str, Any]) -> None:
    assert artifact_mount_problems(compose) == []
    assert len(worker_services(compose)) >= 2  # the CPU worker and the GPU one


def test_default_worker_needs_no_gpu(compose: dict[str, Any]) -> None:
    """`docker compose up` must work on a machine without a GPU: the reservation sits in a
    service that only the `gpu` profile starts."""
    for name, service in compose["services"].items():
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        if reservations.get("devices"):
            assert service.get("profiles") == ["gpu"], name
    gpu = compose["services"]["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert gpu["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert "profiles" not in compose["services"]["worker"]


def test_builds_reference_existing_dockerfiles(compose: dict[str, Any]) -> None:
    dockerfiles = set()
    for name, service in stillhouse_services(compose).items():
        build = service["build"]
        context = ROOT / build["context"]
        assert context.resolve() == ROOT, f"{name} builds from {context}, not the repo root"
        assert (context / build["dockerfile"]).is_file(), name
        dockerfiles.add((context / build["dockerfile"]).resolve())
    assert dockerfiles == {API_DOCKERFILE, WORKER_DOCKERFILE}


def test_api_port_agrees_everywhere(compose: dict[str, Any], api_image: list[Instruction]) -> None:
    api = compose["services"]["api"]
    args = build_parser().parse_args(command_argvs(api["command"])[-1][1:])
    assert args.host == "0.0.0.0", "inside a container the API must listen on every interface"
    container_ports = {int(str(p).rsplit(":", 1)[-1]) for p in api["ports"]}
    exposed = {int(ins.args.split("/")[0]) for ins in api_image if ins.keyword == "EXPOSE"}
    assert container_ports == exposed == {args.port}
    assert f":{args.port}/v2/health/ready" in " ".join(api["healthcheck"]["test"])


class _Ready(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass


def test_api_healthcheck_fails_on_503_and_passes_on_200(compose: dict[str, Any]) -> None:
    """Run the healthcheck's own command against a stand-in server on a free port."""
    test = compose["services"]["api"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    server = HTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = [sys.executable, *test[2:]]
        argv[-1] = argv[-1].replace(":8000/", f":{server.server_port}/")
        _Ready.status = 503
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
        _Ready.status = 200
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    finally:
        server.shutdown()
        server.server_close()


# --- Dockerfiles ---------------------------------------------------------------------------


def test_api_image(api_image: list[Instruction], compose: dict[str, Any]) -> None:
    assert dockerfile_problems(api_image) == []
    assert base_image(api_image).startswith("python:3.11")
    runs = [ins.args for ins in api_image if ins.keyword == "RUN"]
    cpu_torch = next(i for i, r in enumerate(runs) if "download.pytorch.org/whl/cpu" in r)
    editable = next(i for i, r in enumerate(runs) if re.search(r"pip install .*-e \.", r))
    # Otherwise the editable install would pull PyPI's CUDA build of torch into the API image.
    assert cpu_torch < editable
    assert "torch" in runs[cpu_torch] and "torchvision" in runs[cpu_torch]
    cmd = next(ins for ins in reversed(api_image) if ins.keyword == "CMD").exec_form()
    assert cmd == compose["services"]["api"]["command"]


def test_worker_image(worker_image: list[Instruction]) -> None:
    assert dockerfile_problems(worker_image) == []
    image = base_image(worker_image)
    assert image.startswith("nvidia/cuda:") and "$" not in image, image
    runs = " ".join(ins.args for ins in worker_image if ins.keyword == "RUN")
    assert "python3.11" in runs
    # The torch build is for the base's CUDA (13.0 <-> cu130), so that the toolkit's driver
    # check on the base matches what torch needs.
    args = arg_defaults(worker_image)
    torch_cuda = re.fullmatch(
        r"https://download\.pytorch\.org/whl/cu(\d+)", args["TORCH_INDEX_URL"]
    )
    assert torch_cuda is not None, args["TORCH_INDEX_URL"]
    assert torch_cuda.group(1) == "".join(args["CUDA_VERSION"].split(".")[:2])
    assert "${TORCH_INDEX_URL}" in runs
    cmd = next(ins for ins in reversed(worker_image) if ins.keyword == "CMD").exec_form()
    assert cmd == ["stillhouse", "worker", "--device", "auto"]


def test_images_agree_with_compose(
    api_image: list[Instruction], worker_image: list[Instruction], compose: dict[str, Any]
) -> None:
    """The images' own defaults (for a bare `docker run`) are settings and match compose."""
    compose_env = environment(compose["services"]["api"])
    for instructions in (api_image, worker_image):
        env = dockerfile_env(instructions)
        assert unknown_settings_keys(env) == []
        assert env["STILLHOUSE_ARTIFACT_DIR"] == compose_env["STILLHOUSE_ARTIFACT_DIR"]
    users = {
        next(i for i in reversed(img) if i.keyword == "USER").args
        for img in (api_image, worker_image)
    }
    assert len(users) == 1, "both images write the shared artifact volume: use one user"


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # A pattern that matches a folder excludes everything under it; `**/` also matches
        # at the root. fnmatch's `*` crosses `/`, which is close enough for these paths.
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            candidates = {pattern, pattern.removeprefix("**/")}
            if any(fnmatch(prefix, c) for prefix in prefixes for c in candidates):
                return True
        return False

    for path in MUST_BE_IGNORED:
        assert ignored(path), f"{path} would be sent to the Docker build"
    for path in NEEDED_BY_THE_BUILD:
        assert not ignored(path), f"{path} is needed by the image but ignored"


# --- the checks catch what they are meant to catch -----------------------------------------


def test_dockerfile_parser_rejects_broken_files() -> None:
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile("FROM python:3.11-slim\nRUNN echo hi\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_dockerfile('FROM python:3.11-slim\nCMD ["stillhouse", "api"\n')
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM python:3.11-slim\nRUN echo \\\n")
    # A continued RUN whose next line looks like an instruction is still one RUN.
    parsed = parse_dockerfile('FROM x\nRUN a \\\n  # note\n  && b\nCMD ["stillhouse", "migrate"]\n')
    assert [i.keyword for i in parsed] == ["FROM", "RUN", "CMD"]


def test_dockerfile_problems_are_found() -> None:
    broken = parse_dockerfile(
        'FROM python:3.11-slim\nCOPY . .\nRUN pip install .\nCMD ["stillhouse", "keys", "create", "--owner", "x"]\n'
    )
    problems = " ".join(dockerfile_problems(broken))
    assert "root" in problems and "-e ." in problems and "keys" in problems


def test_command_check_rejects_what_the_cli_does_not_accept() -> None:
    assert command_problem(["stillhouse", "worker", "--device", "tpu"]) is not None
    assert command_problem(["stillhouse", "api", "--port", "eighty"]) is not None
    assert command_problem(["uvicorn", "app.main:app"]) is not None
    assert command_problem(["stillhouse", "status", "job-1"]) is not None
    argvs = command_argvs(["sh", "-c", "stillhouse migrate && stillhouse api --host 0.0.0.0"])
    assert [command_problem(a) for a in argvs] == [None, None]


def test_settings_and_volume_checks_find_mistakes(compose: dict[str, Any]) -> None:
    assert unknown_settings_keys({"STILLHOUSE_DATABASE_ULR": "x", "PATH": "/bin"}) == [
        "STILLHOUSE_DATABASE_ULR"
    ]
    with pytest.raises(ValueError, match="no default"):
        interpolate("postgresql+psycopg://u:${DB_PASSWORD}@postgres/db")
    assert interpolate("${A:-x}-${B-y}-$$HOME") == "x-y-$HOME"

    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["volumes"] = []
    assert any("worker mounts nothing" in p for p in artifact_mount_problems(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["volumes"] = ["other:/var/lib/stillhouse/artifacts"]
    assert any("not a named volume" in p for p in artifact_mount_problems(broken))


# --- the real compose, where one can be run ------------------------------------------------


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) or the older `docker-compose`, whichever runs."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_validates(profile: list[str]) -> None:
    """`config -q` validates the file against compose's schema; it needs no engine."""
    command = _compose_command()
    if command is None:
        reason = (
            "the docker client is here but has no compose plugin, and docker-compose is absent"
            if shutil.which("docker")
            else "neither docker nor docker-compose is installed"
        )
        pytest.skip(f"cannot validate with compose itself: {reason}")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
