# The two commands a newcomer needs (see README.md):
#   make demo   set up .venv and run the main job on the embedded model
#   make test   set up .venv and run lint + the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint format unit

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) experiments/demo.py

lint: setup
	$(VENV)/bin/ruff check src tests experiments benchmarks
	$(VENV)/bin/ruff format --check src tests experiments benchmarks

format: setup
	$(VENV)/bin/ruff format src tests experiments benchmarks
	$(VENV)/bin/ruff check --fix src tests experiments benchmarks

unit: setup
	$(PY) -m pytest -q -m "not integration"

test: lint
	$(PY) -m pytest -q
