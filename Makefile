# pcrs-indexer: the two commands of the README, and their parts.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO ?= demo-data

.PHONY: demo test venv servers lint bench clean

## Set up, generate the sample livrable, index it and print where the outputs are.
demo: venv
	$(BIN)/pcrs-indexer sample $(DEMO)/livrable
	$(BIN)/pcrs-indexer index $(DEMO)/livrable --out $(DEMO)/out --db sqlite:///$(DEMO)/state.sqlite

## Set up (Python packages, and the Debian servers the tests run against) and run the tests.
test: venv servers
	$(BIN)/python -m pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Install the real servers the tests start on loopback (nginx, ...). Needs root or sudo.
servers:
	bash tests/install-servers.sh

lint: venv
	$(BIN)/ruff check indexer tasks tests
	$(BIN)/mypy indexer

clean:
	rm -rf $(VENV) $(DEMO)
