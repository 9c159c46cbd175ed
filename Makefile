# Stillhouse: `make run` starts the service on 127.0.0.1:8000; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv run test lint format bench bench-full clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

# Migrates the SQLite default, then runs the API and one embedded worker (docs at /docs).
run: venv
	$(BIN)/stillhouse serve --host $(HOST) --port $(PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Lint, then every test against SQLite and the Postgres at 127.0.0.1:5432, except those
# marked slow (the pipeline examples' full runs: make test-slow).
test: lint
	$(BIN)/pytest -m "not slow"

# The tests marked slow: each pipeline example in examples/ run end to end (~6 minutes).
test-slow: venv
	$(BIN)/pytest -m slow

# The benchmarks, sized for a 2-core machine (under 10 minutes); prints one JSON line.
bench: venv
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts stillhouse.db*
