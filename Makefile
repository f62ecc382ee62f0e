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

.PHONY: help install smoke preflight reproduce ablations backbones compare report lab lint test bench gpu-report check-lower-bounds clean

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

RUN_ENV ?=
# The stage registry (sgid_utils/core/registry.py) orders everything; the Makefile asks it which notebooks run.
NOTEBOOKS = $(addprefix notebooks/,$(addsuffix .ipynb,$(shell $(PY) -m sgid_utils stages --notebooks)))

# The methods comparison (what `make compare PARAMS=params/smoke_methods.yaml` runs) goes beside the main chain's
# training, ablations and notebooks (reproduce --compare): run one after the other, one core idled for a minute.
smoke: $(STAMP) ## Run every notebook and the ablations offline on params/smoke.yaml (tiny models, CPU); page reports/smoke/index.html
	$(MAKE) --no-print-directory reproduce PARAMS=params/smoke.yaml RUN_ENV="$(OFFLINE) OMP_NUM_THREADS=1" JOBS=2 \
	  COMPARE=params/smoke_methods.yaml

# Before a long GPU run: checks that start nothing, then a canary of every stage on 2 images per class, and the
# projected wall-clock and disk, for each params file `make reproduce` would run (PARAMS=params/smoke.yaml offline).
# Every file is checked; the exit status is 1 when a check of any of them failed.
preflight: $(STAMP) ## Check ids, versions, device and disk, run a tiny canary, project time and disk (reports/<run>/preflight.md)
	status=0; for p in $(PARAMS); do $(RUN_ENV) $(PY) -m sgid_utils preflight --params $$p || status=1; done; exit $$status

# Per data set, `python -m sgid_utils reproduce` (sgid_utils/reproduce.py): its stages up to training in one process,
# the notebooks of those stages, its ablation profile if there is one, the notebooks from the results stage on, then
# the run's HTML page. JOBS=N (N > 1) uses a CPU's spare cores (not one GPU: each process loads its own models).
# COMPARE=FILE also runs that methods profile (its run.reuse: the run of PARAMS) as `make compare` would.
JOBS ?= 1
COMPARE ?=
reproduce: $(STAMP) ## Run every stage, notebook and ablation profile for each params file (PARAMS=params/pets.yaml for one); outputs in reports/<run>/
	for p in $(PARAMS); do $(RUN_ENV) $(PY) -m sgid_utils reproduce --params $$p --jobs $(JOBS) \
	  $(if $(COMPARE),--compare $(COMPARE)) || exit 1; done

ablations: $(STAMP) ## Run the ablation profiles alone (PARAMS=params/pets.yaml -> params/pets_ablations.yaml)
	for p in $(PARAMS); do $(PY) -m sgid_utils run ablations --params $${p%.yaml}_ablations.yaml --jobs $(JOBS) || exit 1; done

# The abstract's claim (gains on three backbones, `references.headline`): params/<name>_backbones.yaml trains ResNet-50 (scratch), ViT-B/16 and CLIP-ViT with every
# method on the generated images of the main run (run.reuse: run the main profile first), all its notebooks (the
# stages before training are linked, not recomputed) and its page.
backbones: $(STAMP) ## Train the three backbones and the combined methods (PARAMS=params/pets.yaml -> params/pets_backbones.yaml)
	for p in $(PARAMS); do b=$${p%.yaml}_backbones.yaml; \
	  $(RUN_ENV) $(PY) -m sgid_utils notebooks --params $$b || exit 1; \
	  $(RUN_ENV) $(PY) -m sgid_utils report --params $$b || exit 1; \
	done

# Which augmentation helps, at what cost: a params/*_methods.yaml profile (run.reuse: run its data set's main profile
# first) runs every stage, its equal-steps variant (the `ablations` it lists, Baselines and images linked), notebook 08
# and the page, whose "Which augmentation" section tabulates each method's gain beside its measured device hours.
compare: $(STAMP) ## Compare SGID, Real Guidance and DA-Fusion at equal images and steps, with each method's cost (PARAMS=params/pets_methods.yaml)
	for p in $(PARAMS); do \
	  $(RUN_ENV) $(PY) -m sgid_utils run all --to-stage quality --params $$p || exit 1; \
	  $(RUN_ENV) $(PY) -m sgid_utils run ablations --params $$p --jobs $(JOBS) || exit 1; \
	  $(RUN_ENV) $(PY) -m sgid_utils notebooks --params $$p --from-stage comparison || exit 1; \
	  $(RUN_ENV) $(PY) -m sgid_utils report --params $$p || exit 1; \
	done

report: $(STAMP) ## Write reports/<run>/index.html for each params file from its tables, figures and notebooks (no server needed)
	for p in $(PARAMS); do $(PY) -m sgid_utils report --params $$p || exit 1; done

# JupyterLab is an extra ([lab] in pyproject.toml), installed on first use, never by `make install` or `make test`.
# LAB_ARGS passes options through, e.g. LAB_ARGS="--no-browser --port 8890", or --allow-root in a container.
LAB_ARGS ?=
lab: $(STAMP) ## Open notebooks/ in JupyterLab with the project's kernel (installs the [lab] extra into .venv once)
	$(PY) -c "import jupyterlab" 2> /dev/null || $(PY) -m pip install -q -c constraints.txt -e '.[lab]'
	$(VENV)/bin/jupyter lab notebooks/ --MappingKernelManager.default_kernel_name=python3 $(LAB_ARGS)

lint: $(STAMP) ## ruff (rules and line length in pyproject.toml); fails on a finding
	$(VENV)/bin/ruff check .

# Both cores: the unit tests on two workers, and beside them the notebooks under nbval (smoke profile, in order, in
# their own run directory), whose output is printed once they end. One torch thread per process: the tiny models'
# ops are too small to gain from threads, and processes with two threads each fight over the two cores.
TEST_ENV = $(OFFLINE) OMP_NUM_THREADS=1
test: $(STAMP) lint ## Lint, then the unit tests and every notebook under nbval on the smoke profile, side by side
	rm -rf runs/nbval reports/nbval && mkdir -p runs
	$(TEST_ENV) SGID_RUN_DIR=$(CURDIR)/runs/nbval SGID_REPORTS_DIR=$(CURDIR)/reports/nbval $(PY) -m pytest -q \
	  --nbval-lax --nbval-kernel-name python3 notebooks/00_preflight.ipynb $(NOTEBOOKS) > runs/nbval.log 2>&1 & \
	  nbval=$$!; $(TEST_ENV) $(PY) -m pytest -q -n 2 --dist worksteal tests; unit=$$?; \
	  wait $$nbval; notebooks=$$?; echo "--- notebooks (nbval):"; cat runs/nbval.log; \
	  exit $$(( unit || notebooks ))

bench: $(STAMP) ## Benchmark per-image vs batched stages on the CPU with the tiny models (bench/README.md for --arch real on a GPU)
	$(OFFLINE) $(PY) bench/bench.py

# One run measures everything GPU-specific (bench/README.md): real architectures with random weights on CUDA, the
# tiny models on the CPU (a minute). On a GPU machine without the venv: bash bench/gpu_setup.sh (same options).
GPU_REPORT_ARGS ?=
gpu-report: $(STAMP) ## Measure generation, captioning, training, memory and projections in one run; reports/gpu/gpu_report.md
	$(OFFLINE) $(PY) bench/gpu_report.py $(GPU_REPORT_ARGS)

check-lower-bounds: $(STAMP) ## Build a throwaway venv with every dependency at its lower bound; run the smoke chain and the unit tests
	$(PY) scripts/check_lower_bounds.py

clean: ## Remove run directories and generated reports (keeps .venv/)
	rm -rf runs reports/*/
