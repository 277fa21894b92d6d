# Every target creates the project's own virtual environment first (Python 3 and make are all it needs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
export SAM_CLI_TELEMETRY := 0
export AWS_EC2_METADATA_DISABLED := true

.PHONY: help venv lint unit integration template-check test demo build audit clean bench

help:
	@echo "make demo   - run the whole pipeline locally (Proofpoint simulator + local AWS emulator on loopback)"
	@echo "make test   - lint, unit tests, integration tests and template checks"
	@echo "make build  - sam build (Docker-free)"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

# checkov's dependency pins conflict with the project's, so it lives in a venv of its own.
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

template-check: $(STAMP) $(CHECKOV_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" CHECKOV="$(CURDIR)/$(CHECKOV_VENV)/bin/checkov" bash tools/template_checks.sh

test: lint unit integration template-check

build: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" sam build --template-file template.yaml

demo: $(STAMP)
	$(BIN)/python tools/demo.py

# Performance benchmarks with their targets (README.md, "Performance"): minutes, not part of `make test`.
bench: $(STAMP)
	$(BIN)/python tools/bench.py

# Vulnerability audit of the pinned runtime requirements. Needs PyPI's vulnerability data (internet),
# so it is not part of `make test` (docs/RELIABILITY.md, "Dependency audit").
audit: $(STAMP)
	$(BIN)/python -m pip install -q pip-audit==2.10.1
	$(BIN)/pip-audit -r requirements.txt --no-deps --disable-pip --strict

clean:
	rm -rf .aws-sam .demo .bench $(VENV) $(CHECKOV_VENV)
