# The two commands of the README. Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m kernels"`.
PYTEST_ARGS ?=

.PHONY: sweep test lint bench-layers setup

setup:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras test

sweep:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras test
	$(PY) experiments/policy_demo.py

test: setup
	$(PY) -m pytest -n 2 -p no:cacheprovider $(PYTEST_ARGS)

lint:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras dev
	$(PY) -m ruff check mpq tests experiments benchmarks tools
	$(PY) -m ruff format --check mpq tests experiments benchmarks tools
