# The two commands of the README. Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m kernels"`.
PYTEST_ARGS ?=

.PHONY: sweep test lint setup

# The sweep's extras, Ray, the real-model extra (transformers) and the Keras extra ride along so
# that the sweep, its Ray executor, tests/training/test_real_models.py and the .keras loader are
# tested too; dev brings ruff, import-linter and mypy.
setup:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras dev,sweep,ray,models,keras

# The default policy sweep (experiments/digits.toml: digits CNN and MLP, tiny LM): table,
# results.jsonl, summary.csv, pareto.png, sweep.png, report.html.
SWEEP_ARGS ?= --out sweep-results

sweep:
	$(PYTHON) tools/bootstrap.py --venv $(VENV) --extras test,sweep
	$(VENV)/bin/mpq sweep $(SWEEP_ARGS)

# The architecture checks first (seconds): the import contracts of pyproject.toml
# (docs/architecture.md) and mypy --strict; then the whole test suite.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
	$(PY) -m pytest -n 2 -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check mpq tests experiments benchmarks tools
	$(PY) -m ruff format --check mpq tests experiments benchmarks tools
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
