# SGID reproduction. `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/pets.yaml params/flowers.yaml
# Offline, quiet, and a throwaway HF cache for the smoke profile and tests: nothing reaches for a hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: help install smoke reproduce test unit nbval bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sgid)" > /dev/null
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ with the pinned versions and a Jupyter kernel

smoke: $(STAMP) ## Run all six notebooks offline on params/smoke.yaml (tiny models, CPU); outputs in reports/smoke/
	$(OFFLINE) $(PY) -m sgid_utils notebooks --params params/smoke.yaml

reproduce: $(STAMP) ## Run all six notebooks for each params file (PARAMS=params/pets.yaml for one); outputs in reports/<run>/
	for p in $(PARAMS); do $(PY) -m sgid_utils notebooks --params $$p || exit 1; done

test: $(STAMP) ## Unit tests, then every notebook under nbval on the smoke profile
	$(OFFLINE) $(PY) -m pytest -q tests
	rm -rf runs/nbval reports/nbval
	$(OFFLINE) SGID_RUN_DIR=$(CURDIR)/runs/nbval SGID_REPORTS_DIR=$(CURDIR)/reports/nbval $(PY) -m pytest -q --nbval-lax --nbval-kernel-name python3 \
		notebooks/01_captioning.ipynb notebooks/02_similarity.ipynb notebooks/03_generation.ipynb \
		notebooks/04_error_analysis_upscaling.ipynb notebooks/05_training.ipynb notebooks/06_results.ipynb \
		notebooks/07_quality_and_statistics.ipynb

bench: $(STAMP) ## Benchmark per-image vs batched stages on the CPU with the tiny models (bench/README.md for --arch real on a GPU)
	$(OFFLINE) $(PY) bench/bench.py

clean: ## Remove run directories and generated reports (keeps .venv/)
	rm -rf runs reports/*/
