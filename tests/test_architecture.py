"""What may import what (docs/architecture.md), checked on the code itself.

- nothing under app/ imports the worker, and importing every app module in a fresh
  interpreter loads no `worker` module;
- the worker imports only the shared core, the contract (schemas, config), the store
  (db, models) and the logging setup from app/;
- the core imports none of the API, the services, serving or the worker;
- services speak no HTTP: no app.api, FastAPI or Starlette;
- the contract (app/schemas) imports no torch;
- no worker module grows past the size a newcomer reads in one sitting.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP, WORKER = ROOT / "app", ROOT / "worker"

# What the worker may import from app/: the core, the contract and the store.
WORKER_MAY_IMPORT = (
    "app.core",
    "app.config",
    "app.db",
    "app.models",
    "app.schemas",
    "app.logging_setup",
)
# Lines a worker module may have (the issue that split worker/pipeline.py set ~400).
MAX_WORKER_MODULE_LINES = 420


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from app import x` may name a module x of the package.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(folder)
        for module in sorted(imported_modules(path))
        if within(module, forbidden)
    ]


def test_no_app_module_imports_the_worker():
    assert offenders(APP, ("worker",)) == []


def test_importing_every_app_module_loads_no_worker_module():
    # A fresh interpreter: this test process has imported the worker already.
    code = (
        "import importlib, pkgutil, sys\n"
        "import app\n"
        "names = [m.name for m in pkgutil.walk_packages(app.__path__, 'app.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.'))\n"
        "print(len(names), loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    count, loaded = out.stdout.strip().split(" ", 1)
    assert int(count) > 40, "walked too few modules to mean anything"
    assert loaded == "[]"


def test_the_worker_imports_only_the_core_the_contract_and_the_store():
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(WORKER)
        for module in sorted(imported_modules(path))
        if within(module, ("app",)) and module != "app" and not within(module, WORKER_MAY_IMPORT)
    ]
    assert bad == []


def test_the_core_imports_no_api_services_serving_or_worker():
    forbidden = ("app.api", "app.services", "app.serving", "app.main", "app.cli", "worker")
    assert offenders(APP / "core", forbidden) == []


def test_serving_does_not_reach_back_into_the_routes():
    assert offenders(APP / "serving", ("app.api", "app.main", "app.cli", "worker")) == []


def test_services_speak_no_http():
    assert offenders(APP / "services", ("app.api", "fastapi", "starlette")) == []


def test_the_contract_imports_no_torch():
    # The job spec and bodies are the contract: a client or a tool reading them must not
    # pay for torch (loss names reach OpenAPI from the registry when it is generated).
    code = (
        "import importlib, pkgutil, sys\n"
        "import app.schemas\n"
        "for m in pkgutil.walk_packages(app.schemas.__path__, 'app.schemas.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", sources(WORKER), ids=lambda p: p.name)
def test_worker_modules_stay_small(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_WORKER_MODULE_LINES, f"{path.name} has {lines} lines: split it"


def test_the_checks_see_a_violation():
    # The import reader must find what these checks forbid, or they pass vacuously.
    sample = ROOT / "tests" / "test_architecture.py"
    assert "subprocess" in imported_modules(sample)
    probe = WORKER / "main.py"
    assert any(within(m, ("app.core",)) for m in imported_modules(probe))
