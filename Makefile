PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install-test test

# torch 2.13.0 is a CPU build the CI machine has on disk; install it only when no torch is
# present, so a GPU machine keeps its CUDA build and pip never pulls the CUDA wheels.
install-test:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"

test: install-test
	$(PYTHON) -m pytest -q
