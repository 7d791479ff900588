# mtlkit: `make demo` runs the default comparison, `make test` runs lint + the fast test suite.
# Both set up .venv on a fresh machine: torch==2.13.0 first (the CPU wheel), then mtlkit[dev].
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mtlkit-installed

.PHONY: install demo test test-slow bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mtlkit run

lint: install
	$(BIN)/ruff check src tests benchmarks

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/bench_mmoe.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
