PYTHON ?= python3
PIP = $(PYTHON) -m pip
DEMO_PROMPT ?= a red circle moving right on a blue background
DEMO_OUTPUT ?= outputs/demo.mp4

.PHONY: install install-test test demo

# Exits 0 when this checkout is pip-installed in editable mode and pyproject.toml has not
# changed since; `install` runs pip only otherwise, and quietly.
define INSTALLED
import importlib.metadata as m, json, os, pathlib, sys
here = pathlib.Path.cwd().resolve().as_uri()
def current(dist):
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    meta = [f.locate() for f in dist.files or () if f.name == "METADATA"]
    return (url.get("url") == here and url.get("dir_info", {}).get("editable") and meta
            and os.path.getmtime(meta[0]) >= os.path.getmtime("pyproject.toml"))
sys.exit(not any(current(d) for d in m.distributions(name="dit-sparse")))
endef
export INSTALLED

# torch 2.13.0 is a CPU build the CI machine has on disk; install it only when no torch is
# present, so a GPU machine keeps its CUDA build and pip never pulls the CUDA wheels.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || (echo "installing torch 2.13.0" && $(PIP) install -q torch==2.13.0)
	@$(PYTHON) -c "$$INSTALLED" || (echo "installing dit-sparse (pip install -e .)" && $(PIP) install -q -e .)

install-test: install
	@$(PYTHON) -c "import pytest" 2>/dev/null || (echo "installing pytest (pip install -e .[dev])" && $(PIP) install -q -e ".[dev]")

test: install-test
	$(PYTHON) -m pytest -q

# One clip from the bundled demo model with the balanced preset (on the GPU if there is one),
# written with its JSON sidecar to outputs/, which git ignores.
demo: install
	$(PYTHON) -m dit_sparse.cli generate --prompt "$(DEMO_PROMPT)" --preset balanced --output $(DEMO_OUTPUT)
	@echo "demo video: $(abspath $(DEMO_OUTPUT))"
