# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MICROPYTHON := node_modules/@micropython/micropython-webassembly-pyscript/package.json

.PHONY: demo test bench link-codes vectors clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Real MicroPython (WebAssembly) for the agent tests and benchmarks, pinned by package-lock.json.
$(MICROPYTHON): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

demo: $(STAMP)
	$(BIN)/linkseal demo

test: $(STAMP) $(MICROPYTHON)
	$(BIN)/python -m pytest

bench: $(STAMP) $(MICROPYTHON)
	$(BIN)/python bench/run.py

# Regenerate agent/link_codes.py after editing hardware/links/*.toml.
link-codes: $(STAMP)
	$(BIN)/python -m hub.link_registry

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis *.egg-info
