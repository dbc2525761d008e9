# The two commands a new user types: `make demo` and `make test`. Both create or refresh .venv from
# uv.lock first (installing uv with pip when it is missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export PATH := $(BIN):$(PATH)

.PHONY: help venv demo test lint format bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

venv: ## create or refresh .venv from uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

demo: venv ## run the pipeline on the embedded defaults (dvc repro: synth → validate → split)
	dvc repro
	@echo
	@echo "medssl demo: done. What it made:"
	@echo "  data/abdominal-us/            synthetic archive (images/, manifest.parquet, reports.parquet)"
	@echo "  reports/validate/report.json  validation results; data docs: reports/validate/data_docs/index.html"
	@echo "  data/splits/                  patient-disjoint splits + label fractions (splits.json, splits.png)"
	@echo "Change a parameter and re-run only what changed:  dvc exp run -S data.seed=2"

test: venv ## lint, format check and the test suite
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks
	pytest

lint: venv ## ruff lint + format check
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks

format: venv ## apply ruff fixes and formatting
	ruff check --fix src tests benchmarks
	ruff format src tests benchmarks

bench: venv ## run the benchmarks (JSON to benchmarks/results/)
	@mkdir -p benchmarks/results
	python benchmarks/validate_tables.py | tee benchmarks/results/validate_tables.json

clean: ## remove generated data and reports (keeps .venv)
	rm -rf data reports .pytest_cache
