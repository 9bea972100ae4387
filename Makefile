# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=

OLDEST_VENV ?= .venv-oldest
OLDEST_PYTHON ?= python3.10

.PHONY: demo test test-oldest lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[test,edges,dev]"
	touch $(STAMP) $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m composer demo --out outputs/demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

# The suite on the oldest Python and the lowest versions pyproject.toml admits for every direct
# dependency (uv's lowest-direct resolution: torch 2.1, torchvision 0.16, numpy 1.24, Pillow 10.1,
# ...), in a venv of its own. transformers 5 refuses torch < 2.6, so the text stack is held below it.
# Downloads several GB (torch 2.1 from PyPI is a CUDA build); not part of `make test`.
test-oldest:
	$(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q uv
	VIRTUAL_ENV=$(OLDEST_VENV) $(OLDEST_VENV)/bin/uv pip install -q --resolution lowest-direct \
		-e ".[test,edges,dev]" "transformers<5"
	$(OLDEST_VENV)/bin/python -m pytest -q -n 2 -p no:cacheprovider $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check composer tasks tests recipes benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(OLDEST_VENV) outputs .pytest_cache
