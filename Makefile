# d2lightning developer commands. `make test` and `make demo` work on a fresh machine: they create .venv first.
# On a CPU-only machine the local CPU build of torch is pinned (TORCH_SPEC); elsewhere override it, e.g.
#   make test TORCH_SPEC="torch>=2.1"
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check d2lightning tests bench
	$(VENV)/bin/ruff format --check d2lightning tests bench
	$(VENV)/bin/mypy d2lightning

demo: setup
	$(VENV)/bin/d2lightning train --config-file configs/shapes_detector.yaml

bench: setup
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
