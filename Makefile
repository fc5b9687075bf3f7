# paramparity: every target runs from the repo root. `make help` lists them.
# Backends and environments are read from backends/*/backend.toml; nothing here names one.
PYTHON   ?= python3.11
VENVS    := .venvs
BASE_PY  := $(VENVS)/base/bin/python
CLI      := $(BASE_PY) -m common
ENVS      = $(shell $(PYTHON) -m common.envs names)
ARGS     ?=

.DEFAULT_GOAL := help
.PHONY: help venvs lock test test-common test-all diff train roundtrip import export bench fuzz lint clean distclean
.SECONDARY:

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z%_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2} /^##@ / {print "  make " substr($$0, 5)}' $(MAKEFILE_LIST)
	@$(PYTHON) -c 'from common.config import valid_names; print("  backends:", valid_names())'

# Each env's requirements file is its lock (locks/<env>.txt), rewritten only when that lock
# changes, and the stamp depends on that file alone: a new lock rebuilds one environment.
$(VENVS)/%.requirements: pyproject.toml $(wildcard locks/*.txt)
	@$(PYTHON) -m common.envs requirements $*

$(VENVS)/%/.stamp: $(VENVS)/%.requirements
	@$(PYTHON) -m common.envs create $*

##@ venv-<env>       create one environment (make venvs lists them all)
venv-%: $(VENVS)/%/.stamp
	@:

venvs: ## create every environment
	@$(MAKE) -s $(addprefix venv-,$(ENVS))

lock: ## resolve every extra anew into locks/<env>.txt, hashes included; the envs install exactly that
	@$(PYTHON) -m common.envs lock $(ENVS)

##@ lock-<env>       resolve one extra anew: lock-torch
lock-%:
	@$(PYTHON) -m common.envs lock $*

test: $(VENVS)/base/.stamp ## run the conformance suite for PARITY_BACKEND
	@$(CLI) test $(ARGS)

test-common: $(VENVS)/base/.stamp ## run common/'s own framework-free tests in the base env
	@$(BASE_PY) -m pytest tests/common -q $(ARGS)

test-all: $(VENVS)/base/.stamp ## base tests + every backend's suite, each in its env, then a summary
	@$(CLI) test-all $(ARGS)

##@ test-<backend>   one backend's suite, by any name or synonym: test-torch, test-tf, test-nnx...
test-%: $(VENVS)/base/.stamp
	@PARITY_BACKEND=$* $(CLI) test $(ARGS)

diff: $(VENVS)/base/.stamp ## side-by-side report of how the frameworks behave (ARGS="--format html")
	@$(CLI) diff $(ARGS)

train: $(VENVS)/base/.stamp ## train the tied MLP in every backend; writes reports/train.html
	@$(CLI) train $(ARGS)

roundtrip: $(VENVS)/base/.stamp ## export from each backend, import into every other: one matrix per model
	@$(CLI) roundtrip $(ARGS)

import: $(VENVS)/base/.stamp ## load a parameter file into every backend: ARGS="FILE --model tied"
	@$(CLI) import $(ARGS)

export: $(VENVS)/base/.stamp ## write a parameter file, no framework: ARGS="--model tied --format save_model OUT"
	@$(CLI) export $(ARGS)

bench: $(VENVS)/base/.stamp ## ratios: adapter vs hand-written training, suites vs imports, per-layer scaling
	@$(CLI) bench $(ARGS)

fuzz: $(VENVS)/base/.stamp ## seeded fuzzing: hostile files vs the reference reader, random specs vs the oracle
	@$(CLI) fuzz $(ARGS)

lint: $(VENVS)/base/.stamp ## ruff check and format check
	@$(BASE_PY) -m ruff check . && $(BASE_PY) -m ruff format --check .

clean: ## remove reports and caches (keeps the environments)
	rm -rf reports .pytest_cache .ruff_cache .hypothesis build *.egg-info $(VENVS)/.jax-cache $(VENVS)/.mlx-cache
	find . -path ./$(VENVS) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove the environments
	rm -rf $(VENVS)
