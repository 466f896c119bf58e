# One command to run the broker (dev mode), one to run every test. Python 3.11+ is all you need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install tools clean

$(STAMP): pyproject.toml $(wildcard clients/python/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(if $(wildcard clients/python/pyproject.toml),-e clients/python)
	touch $(STAMP)

install: $(STAMP)

# the tools the deploy tests run; a failed install fails the target (CI must not turn checks into skips)
tools: $(STAMP)
	deploy/tools/install-helm.sh $(BIN)/helm

run: $(STAMP)
	$(BIN)/broker dev

test: tools
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .broker .pytest_cache
