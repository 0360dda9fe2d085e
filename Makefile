# Two commands matter (see README): `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup browser bench ddl

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# What `make run` installs with the app: the pip extras of every database, storage and model
# backend (`make run EXTRAS=postgres,llm` for fewer). The test tools come only with `make test`.
EXTRAS ?= all

# The app and the EXTRAS backends, without the test tools; redone when pyproject.toml changes.
$(VENV)/.installed-app-$(EXTRAS): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# The project with every backend and the dev tools; redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the browser tests (Playwright's own download does not work here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

run: $(VENV)/.installed-app-$(EXTRAS)
	$(BIN)/chainlit run app.py --host $${HOST:-127.0.0.1} --port $${PORT:-8000} --headless

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m benchmarks.sidebar
	$(BIN)/python -m benchmarks.dynamodb
	$(BIN)/python -m benchmarks.writes
	$(BIN)/python -m benchmarks.dynamodb_writes
	$(BIN)/python -m benchmarks.api
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.ops

ddl: setup
	$(BIN)/python -m datalayers.sqlalchemy ddl --write
