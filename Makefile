PYTHON ?= python3
PIP = $(PYTHON) -m pip
DEMO_PROMPT ?= a red circle moving right on a blue background
DEMO_OUTPUT ?= demo.mp4

.PHONY: install install-test test demo

# torch 2.13.0 is a CPU build the CI machine has on disk; install it only when no torch is
# present, so a GPU machine keeps its CUDA build and pip never pulls the CUDA wheels.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e .

install-test: install
	$(PIP) install -e ".[dev]"

test: install-test
	$(PYTHON) -m pytest -q

# One clip from the bundled demo model with the balanced preset (on the GPU if there is one).
demo: install
	$(PYTHON) -m dit_sparse.cli generate --prompt "$(DEMO_PROMPT)" --preset balanced --output $(DEMO_OUTPUT)
	@echo "demo video: $(abspath $(DEMO_OUTPUT))"
