# d2lightning developer commands. `make test` and `make demo` work on a fresh machine: they create .venv first.
# On a CPU-only machine the local CPU build of torch is pinned (TORCH_SPEC); elsewhere override it, e.g.
#   make test TORCH_SPEC="torch>=2.1"
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

# mkdocs-material and a plugin print a notice about a future MkDocs 2 on every build; docs extra pins mkdocs<2
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

.PHONY: setup test lint demo bench docs docs-serve wheel wheel-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check d2lightning tests bench docs
	$(VENV)/bin/ruff format --check d2lightning tests bench docs
	$(VENV)/bin/mypy d2lightning

demo: setup
	$(VENV)/bin/d2lightning train --config-file shapes_detector

bench: setup
	$(PY) bench/overhead.py

# the documentation site into site/; strict: any warning (a broken link, an unresolved reference) fails the build
docs: setup
	$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	$(DOCS_ENV) $(VENV)/bin/mkdocs serve

# the sdist and the wheel into dist/, and their metadata checked
wheel: setup
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# the wheel installed into a fresh virtualenv, outside the source tree, trains the built-in demo (CI runs it)
wheel-check: setup
	PY=$(PY) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/check_wheel.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site dist
