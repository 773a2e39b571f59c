# The two commands of the README. Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m kernels"`.
PYTEST_ARGS ?=

.PHONY: sweep test lint setup

# The sweep's extras, Ray and the real-model extra (transformers) ride along so that the
# sweep, its Ray executor and tests/training/test_real_models.py are tested too.
setup:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras test,sweep,ray,models,keras

# The default policy sweep (experiments/digits.toml: digits CNN and MLP, tiny LM): table,
# results.jsonl, summary.csv, pareto.png, sweep.png, report.html.
SWEEP_ARGS ?= --out sweep-results

sweep:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras test,sweep
	$(VENV)/bin/mpq sweep $(SWEEP_ARGS)

test: setup
	$(PY) -m pytest -n 2 -p no:cacheprovider $(PYTEST_ARGS)

lint:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras dev,sweep,ray,models
	$(PY) -m ruff check mpq tests experiments benchmarks tools
	$(PY) -m ruff format --check mpq tests experiments benchmarks tools
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
