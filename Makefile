# memristor-asr: `make demo` runs the project's main job, `make test` its tests.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# espeak-ng synthesizes the mini corpus; ngspice checks the IR-drop solver (tests/memsim/test_ir_drop.py)
DEBIAN_PACKAGES := espeak-ng ngspice
STAMP := $(VENV)/.installed
SOURCES := memsim asr scripts benchmarks tests

.PHONY: setup test lint demo benchmark gpu-check clean

setup: $(STAMP)

# Reinstall when the dependency list or the tested versions change; Debian packages only when missing and
# running as root. The recipe and the dev tools at the versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt Makefile
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
		else echo "warning: missing Debian packages (install them as root): $$missing"; fi; \
	fi
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[asr,dev]'
	touch $@

test: setup
	$(PYTHON) -m pytest -q

# ruff (lint and format), mypy, and the import layers (tests/test_imports.py), as CI runs them
lint: setup
	$(PYTHON) -m ruff check $(SOURCES)
	$(PYTHON) -m ruff format --check $(SOURCES)
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_imports.py

demo: setup
	$(PYTHON) scripts/run.py +experiment=mini_demo

benchmark: setup
	$(PYTHON) benchmarks/device.py
	$(PYTHON) benchmarks/crossbar.py
	$(PYTHON) benchmarks/train_step.py

# on a CUDA machine: hot paths without host syncs, the test suites, the benchmarks and a tiny recipe on the GPU
gpu-check: setup
	$(PYTHON) scripts/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
