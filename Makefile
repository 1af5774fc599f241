# The two commands of the README: `make run` and `make test`. Both are idempotent.
# `make test` runs `make lint` first, so CI (.ci/run -> make test) refuses what the linters refuse.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# 4 pytest-xdist workers, even on 2 cores: most tests wait on their own agent, broker, HQ or PostgreSQL
# processes. Each worker starts its own (free ports from its own slice, its own temp dirs, its own PostgreSQL);
# worksteal hands a worker that is done the tests another has not started. Serial: make test PYTEST_XDIST=
PYTEST_XDIST ?= -n 4 --dist worksteal

.PHONY: run test lint bench system-deps system-deps-test check-python clean

run: system-deps $(VENV)/.installed
	@mkdir -p var
	$(BIN)/posedge run $(ARGS)

test: system-deps-test $(VENV)/.installed-test lint
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle errors, import order) and mypy; settings in pyproject.toml. mypy reads the
# rooms under their installed names through links (it cannot follow the editable install's hook).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	@mkdir -p $(VENV)/typecheck/posedge
	@for f in __init__.py __main__.py; do ln -sfn $(CURDIR)/posedge/$$f $(VENV)/typecheck/posedge/$$f; done
	@for room in agent drivers sync hq; do [ ! -d $$room ] || ln -sfn $(CURDIR)/$$room $(VENV)/typecheck/posedge/$$room; done
	$(BIN)/mypy

bench: system-deps-test $(VENV)/.installed-test
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "posedge needs Python 3.11 or newer; found " + sys.version.split()[0])'

system-deps:
	@tools/system-deps.sh run

system-deps-test:
	@tools/system-deps.sh test

$(VENV)/bin/python: | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml setup.py | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) var .pytest_cache
