# paramparity: every target runs from the repo root. `make help` lists them.
PYTHON    ?= python3.11
BACKENDS  := torch mxnet jax tensorflow
VENVS     := .venvs
BASE_PY   := $(VENVS)/base/bin/python
ARGS      ?=

.DEFAULT_GOAL := help
.PHONY: help venvs test test-common test-all $(addprefix test-,$(BACKENDS)) diff train roundtrip bench lint clean
.PRECIOUS: $(VENVS)/%/.stamp

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z%_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2} /^##@ / {print "  make " substr($$0, 5)}' $(MAKEFILE_LIST)
	@echo "  PARITY_BACKEND=<torch|mxnet|jax|tensorflow> make test   (synonyms: pytorch, gluon, flax, tf)"

# One venv per extra of pyproject.toml; re-created when pyproject.toml changes.
$(VENVS)/%/.stamp: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; paramparity needs Python 3.11 (mxnet 1.9.1)" >&2; exit 2; }
	@echo "==> creating $(VENVS)/$* from the [$*] extra of pyproject.toml (log: $(VENVS)/$*.log)"
	@rm -rf $(VENVS)/$* && mkdir -p $(VENVS)
	@$(PYTHON) -m venv $(VENVS)/$*
	@$(PYTHON) -c 'import sys, tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; name = sys.argv[1]; name in extras or sys.exit("error: pyproject.toml has no extra [" + name + "]; extras: " + " ".join(extras)); print("\n".join(extras[name]))' $* > $(VENVS)/$*/requirements.txt
	@$(VENVS)/$*/bin/python -m pip install --disable-pip-version-check -r $(VENVS)/$*/requirements.txt > $(VENVS)/$*.log 2>&1 \
		|| { tail -n 20 $(VENVS)/$*.log >&2; echo "error: pip failed for $(VENVS)/$*; full log: $(VENVS)/$*.log" >&2; exit 1; }
	@touch $@

##@ venv-<name>      create one env: venv-base, venv-torch, venv-mxnet, venv-jax, venv-tensorflow
venv-%: $(VENVS)/%/.stamp
	@:

venvs: $(addprefix $(VENVS)/,$(addsuffix /.stamp,base $(BACKENDS))) ## create all five environments

test: $(VENVS)/base/.stamp ## run the conformance suite for PARITY_BACKEND
	@$(BASE_PY) -m common.cli test $(ARGS)

##@ test-<backend>   run one backend's suite: test-torch, test-mxnet, test-jax, test-tensorflow
$(addprefix test-,$(BACKENDS)): test-%: $(VENVS)/base/.stamp

	@PARITY_BACKEND=$* $(BASE_PY) -m common.cli test $(ARGS)

test-common: $(VENVS)/base/.stamp ## run common/'s own framework-free tests in the base env
	@$(BASE_PY) -m pytest tests/common -q $(ARGS)

test-all: $(VENVS)/base/.stamp ## base tests + all four backends, each in its env, then a summary
	@$(BASE_PY) -m common.cli test-all $(ARGS)

diff: $(VENVS)/base/.stamp ## side-by-side report of how the frameworks behave (ARGS="--format html")
	@$(BASE_PY) -m common.cli diff $(ARGS)

train: $(VENVS)/base/.stamp ## train the tied MLP in every backend; writes reports/train.html (ARGS="--steps 200")
	@$(BASE_PY) -m common.cli train $(ARGS)

roundtrip: $(VENVS)/base/.stamp ## export from each backend, import into every other: 4x4 matrix per model
	@$(BASE_PY) -m common.cli roundtrip $(ARGS)

lint: $(VENVS)/base/.stamp ## ruff check and format check
	@$(BASE_PY) -m ruff check . && $(BASE_PY) -m ruff format --check .

clean: ## remove environments and reports
	rm -rf $(VENVS) reports
