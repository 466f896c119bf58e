# One command to run the broker (dev mode), one to run every test. Python 3.11+ is all you need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install clean

$(STAMP): pyproject.toml $(wildcard clients/python/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(if $(wildcard clients/python/pyproject.toml),-e clients/python)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/broker dev

test: $(STAMP)
	-deploy/tools/install-helm.sh $(BIN)/helm  # for the Helm chart tests (a no-op once there)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .broker .pytest_cache
