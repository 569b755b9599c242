# Two commands matter on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project first. `make check` is the quick edit
# loop (lint, types and the tests not marked slow); `make test` is the full suite CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test check lint typecheck bench bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harvester demo --out ./demo-lake

test: $(STAMP)
	$(BIN)/ruff check harvester tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check harvester tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" -n 2

lint: $(STAMP)
	$(BIN)/ruff check harvester tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run --out benchmarks/RESULTS.md --set repeat=3

bench-smoke: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run --smoke

clean:
	rm -rf $(VENV) demo-lake .pytest_cache .mypy_cache .ruff_cache
