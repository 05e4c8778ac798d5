# Every target builds what it needs from scratch on a machine with only Python 3.11 and pip.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Where run, experiments and bench write: runs/ is git-ignored. The committed results/ change
# only on purpose: `make results` (and `make bench OUT=results` for the benchmark's tables).
OUT    ?= runs

.PHONY: run test test-slow docs lint bench experiments results clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install --quiet -e '.[dev]'
	touch $@

$(VENV)/.docs: $(VENV)/.core
	$(PIP) install --quiet -e '.[docs]'
	touch $@

$(VENV)/.experiments: $(VENV)/.core
	$(PIP) install --quiet -e '.[experiments,rl]'
	touch $@

run: $(VENV)/.experiments
	$(PY) -m experiments.default --out $(OUT)

bench: $(VENV)/.dev
	$(PY) -m experiments.benchmark --out $(OUT)

experiments: $(VENV)/.experiments
	$(PY) -m experiments.all --out $(OUT)

# Regenerates the committed results: the default run, then every experiment at full size.
results: $(VENV)/.experiments
	$(PY) -m experiments.default --out results
	$(PY) -m experiments.all --out results

# The documentation site into site/ (git-ignored); --strict: a broken link, anchor or API
# reference fails the build. Never --quiet: it drops the warnings that --strict counts, and
# a broken link then builds. (NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0.)
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The quick set (pyproject's addopts exclude the tests marked slow). The site is built first
# (seconds); the pages' code blocks run inside pytest (doctests).
test: $(VENV)/.dev $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(PY) -m pytest -q -n 2

# Only the slow tests (many kill trials of a save, concurrent checkpoint writers).
test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow tests

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check jaxrnn tests experiments
	$(VENV)/bin/ruff format --check jaxrnn tests experiments

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
