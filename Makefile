# pcrs-indexer: the two commands of the README, and their parts.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO ?= demo-data
BENCH_ARGS ?=
STATIC = indexer/api/static

.PHONY: demo test test-fast venv servers lint bench lock clean

## Set up, generate the sample livrable, index it and print where the outputs are.
demo: venv
	$(BIN)/pcrs-indexer sample $(DEMO)/livrable
	$(BIN)/pcrs-indexer index $(DEMO)/livrable --out $(DEMO)/out --db sqlite:///$(DEMO)/state.sqlite

## Set up (Python packages, and the Debian servers the tests run against), lint, and run every test.
test: venv servers lint
	$(BIN)/python -m pytest --durations=25

## The unit lane only: no server, a few seconds.
test-fast: venv
	$(BIN)/python -m pytest tests/unit

venv: $(VENV)/.installed $(STATIC)/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## The map page's library (Leaflet) and /docs' Swagger UI, from npm as its lock file pins it (served by the API,
## Leaflet inlined in preview.html), no install script run.
$(STATIC)/node_modules/.installed: $(STATIC)/package-lock.json
	npm ci --prefix $(STATIC) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

## Install the real servers the tests start on loopback (nginx, ...). Needs root or sudo.
servers:
	bash tests/servers/install-servers.sh

## ruff (with a complexity limit) and mypy --strict on the core and the tasks.
lint: venv
	$(BIN)/ruff check indexer tasks tests
	$(BIN)/mypy indexer tasks

## The speed benchmark (tests/benchmarks): make bench BENCH_ARGS="--sizes 1000 --concurrency 64"
bench: venv
	$(BIN)/python -m tests.benchmarks $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.export_bench $(EXPORT_BENCH_ARGS)

## Pin the image's dependencies: docker/requirements.lock, `pip freeze` of a clean venv with the package.
LOCK_VENV ?= /tmp/pcrs-indexer-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet .
	{ echo "# The image's dependencies, pinned: \`pip freeze\` of a clean Python 3.11 venv with the package installed."; \
	  echo "# Made by \`make lock\`; the image installs exactly these, then the package without resolving again."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude pcrs-indexer; } > docker/requirements.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(DEMO)
