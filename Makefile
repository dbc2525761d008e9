# The two commands a new user types: `make demo` and `make test`. Both create or refresh .venv from
# uv.lock first (installing uv with pip when it is missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export PATH := $(BIN):$(PATH)
PY_SRC := src tests benchmarks components pipelines

.PHONY: help venv demo test lint format bench image clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

venv: ## create or refresh .venv from uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

demo: venv ## the whole job on the embedded defaults: dvc repro synth → … → register
	dvc repro
	@echo
	@echo "== unsupervised classifier: deep clustering (pretrain.method) + Algorithm 1 (paper 000 Table 1 layout) =="
	@cat models/pretrain/table.txt
	@echo
	@echo "== fine-tuned from the deep-clustering encoder (paper 000 Table 2 layout) =="
	@cat reports/evaluate/table.txt
	@echo
	@echo "== the same training from random initialisation (baseline) =="
	@cat reports/evaluate-scratch/table.txt
	@echo
	@echo "== paper 002: normal/abnormal kidney, fine-tuned (GCE) from the ConVIRT encoder (Table 1 layout; ~20 test images: plumbing, not a result) =="
	@cat reports/evaluate-kidney/table.txt
	@echo
	@echo "== registry =="
	@medssl models list
	@echo
	@echo "medssl demo: done. What it made:"
	@echo "  data/abdominal-us/          synthetic archive (images/, manifest.parquet, reports.parquet)"
	@echo "  reports/validate/           report.json; data docs: reports/validate/data_docs/index.html"
	@echo "  data/splits/                patient-disjoint splits + label fractions (splits.json, splits.png)"
	@echo "  models/pretrain/            encoder.pt, clusters.json, assignments.parquet, tsne.png, cluster_sizes.png"
	@echo "  models/supervised/          model.pt (fine-tuned from encoder.pt), history.csv, predictions.parquet"
	@echo "  models/scratch/             the from-scratch baseline (reports/evaluate-scratch/)"
	@echo "  data/kidney-pairs/          paper 002 image-text pairs (flow.png, mentions.parquet, tokenizer/)"
	@echo "  models/convirt/, models/kidney/  ConVIRT encoder; kidney model (reports/evaluate-kidney/, registered: kidney-abnormal)"
	@echo "  reports/evaluate/           metrics.json, report.md, pr_curves.png (dvc metrics show / dvc plots show)"
	@echo "  mlflow.db                   runs and registered models: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@echo "Use the champion:"
	@echo "  source .venv/bin/activate && medssl predict models:/abdominal-organs@champion data/splits --out /tmp/predictions"
	@echo "Change a parameter and re-run only what changed:"
	@echo "  source .venv/bin/activate && dvc exp run -S lsd.alpha=1.2 && medssl models compare 1 2"
	@echo "Sweep a hyperparameter with Ray Tune (every trial an MLflow child run; --apply writes the best to params.yaml):"
	@echo "  source .venv/bin/activate && medssl tune data/splits -S lsd.lambda=[1,2,5] --seeds 2 --metric val_nmi"
	@echo "Semi-supervised FixMatch, and paper 000 Fig. 6 (supervised vs FixMatch, random vs encoder init, 10-100 % labels):"
	@echo "  source .venv/bin/activate && medssl train data/splits --out models/fixmatch -S train.method=fixmatch-twohead -S train.max_steps=200"
	@echo "  source .venv/bin/activate && medssl study label-fractions data/splits --encoder models/pretrain/encoder.pt --seeds 1"
	@echo "Breast-ultrasound lesion recognition, paper 004 Tables 1-2 (6 variants x 5 patient-grouped folds):"
	@echo "  source .venv/bin/activate && medssl data synth --kind breast-us --size tiny --out data/breast-us && medssl study cv data/breast-us --seeds 1"
	@echo "Image-report pre-training, paper 002 Table 1 (ConVIRT vs random / LSD init, controls; ~70 min on 2 cores):"
	@echo "  source .venv/bin/activate && python benchmarks/convirt_study.py --seeds 0 1 2 --threshold 0.3 --out reports/studies/convirt"

test: venv ## lint, format check and the test suite
	ruff check $(PY_SRC)
	ruff format --check $(PY_SRC)
	pytest

lint: venv ## ruff lint + format check
	ruff check $(PY_SRC)
	ruff format --check $(PY_SRC)

format: venv ## apply ruff fixes and formatting
	ruff check --fix $(PY_SRC)
	ruff format $(PY_SRC)

bench: venv ## run the benchmarks (JSON to benchmarks/results/)
	@mkdir -p benchmarks/results
	python benchmarks/validate_tables.py | tee benchmarks/results/validate_tables.json
	python benchmarks/train_throughput.py | tee benchmarks/results/train_throughput.json
	python benchmarks/synth_learnability.py | tee benchmarks/results/synth_learnability.json
	python benchmarks/ingest_throughput.py | tee benchmarks/results/ingest_throughput.json
	python benchmarks/ingest_commits.py | tee benchmarks/results/ingest_commits.json
	python benchmarks/evaluate_bootstrap.py | tee benchmarks/results/evaluate_bootstrap.json
	python benchmarks/predict_throughput.py | tee benchmarks/results/predict_throughput.json

IMAGE ?= medssl:dev
image: ## build the container image (needs a Docker engine; IMAGE=name:tag)
	docker build -t $(IMAGE) --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

clean: ## remove generated data and reports (keeps .venv)
	rm -rf data reports models .cache .pytest_cache
