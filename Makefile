# Every target creates the project's own virtual environment first (Python 3 and make are all it needs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export SAM_CLI_TELEMETRY := 0
export AWS_EC2_METADATA_DISABLED := true

.PHONY: help venv lint unit integration template-check test demo build clean

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

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

template-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash tools/template_checks.sh

test: lint unit integration template-check

build: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" sam build --template-file template.yaml

demo: $(STAMP)
	$(BIN)/python tools/demo.py

clean:
	rm -rf .aws-sam .demo .bench $(VENV)
