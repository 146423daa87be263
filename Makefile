# Two commands for a new user: `make demo` and `make test`. Both create the
# virtualenv on first use; nothing else needs to be set up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the embedded PostgreSQL, migrate the hub and demo instances, show status.
demo: $(STAMP)
	$(BIN)/ophelia-db local start
	$(BIN)/ophelia-db upgrade --all
	$(BIN)/ophelia-db status

## The whole test suite (it starts its own PostgreSQL), plus lint.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/fleet_bench.py

clean:
	-$(BIN)/ophelia-db local stop
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
