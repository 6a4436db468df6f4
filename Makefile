# Two commands do all the set-up on a fresh machine:
#   make demo   trains and evaluates a compact SSD on generated data (the main job)
#   make test   lint + the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-portable lint fuzz bench gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch 2.14.1 / torchvision 0.29.1 install from this machine's local wheels.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# The suite with PyTorch's and oneDNN's kernels forced down to what any x86-64 CPU has
# (no AVX2/AVX-512): what another machine's CPU computes differently shows up here.
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 $(VENV)/bin/pytest

# The long property-based campaign over bad input (thousands of cases per property, ~10 min).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -m fuzz -p no:cacheprovider --hypothesis-show-statistics

demo: $(STAMP)
	$(VENV)/bin/singleshot demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

# The GPU check (benchmarks/gpu_check.py): correctness on CUDA, training, input pipeline,
# inference and exported models, in at most 8 minutes on one GPU; writes
# $(GPU_CHECK_OUT)/gpu_report.json and gpu_report.md. It runs this tree's code with the
# venv's Python where there is one, else $(PYTHON) (a GPU machine's own PyTorch install).
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	PYTHONPATH=src $(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache .hypothesis
