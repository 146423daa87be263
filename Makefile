# Two commands for a new user: `make demo` and `make test`. Both create the
# virtualenv on first use; nothing else needs to be set up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt install bench clean bytecode

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# An editable install leaves our modules uncompiled, and PYTHONDONTWRITEBYTECODE
# (set on some machines) would make every command compile them again at start-up.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q ophelia_db

install: bytecode

## Start the embedded PostgreSQL, migrate the hub and demo instances, show status.
demo: bytecode
	$(BIN)/ophelia-db local start
	$(BIN)/ophelia-db upgrade --all
	$(BIN)/ophelia-db status
	@echo
	@echo "The demo fleet's page: $(BIN)/ophelia-db serve   # then open http://127.0.0.1:8080/"

## The whole test suite (it starts its own PostgreSQL), plus lint.
test: bytecode
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bytecode
	$(BIN)/python bench/fleet_bench.py

clean:
	-$(BIN)/ophelia-db local stop
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
