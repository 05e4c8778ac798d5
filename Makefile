# Every target builds what it needs from scratch on a machine with only Python 3.11 and pip.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: run test lint bench experiments clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install --quiet -e '.[dev]'
	touch $@

$(VENV)/.experiments: $(VENV)/.core
	$(PIP) install --quiet -e '.[experiments]'
	touch $@

run: $(VENV)/.experiments
	$(PY) -m experiments.default

bench: $(VENV)/.dev
	$(PY) -m experiments.benchmark

experiments: $(VENV)/.experiments
	$(PY) -m experiments.all

test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check jaxrnn tests experiments
	$(VENV)/bin/ruff format --check jaxrnn tests experiments

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
