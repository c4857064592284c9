# Set-up, pipeline and tests. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Stage commands in dvc.yaml say `python`: it must be the venv's, for DVC and for Spark workers.
export PATH := $(abspath $(BIN)):$(PATH)
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

java: ## Check for Java 17+ (installs a headless JRE with apt-get when run as root)
	@bash scripts/ensure-java.sh

browser: ## Check for Chromium, the UI test's browser (installs Debian's with apt-get when run as root)
	@bash scripts/ensure-browser.sh

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# Bytecode by compileall on every core (40 s here) instead of pip's one file at a time (~95 s).
	@# It must be written now: with PYTHONDONTWRITEBYTECODE set, every process would recompile what
	@# it imports. A few packages ship files that are not Python 3: their errors are discarded (as pip does).
	$(BIN)/pip install --quiet --no-deps --no-compile -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-compile --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	@# The Spark driver's class-data archive: every stage's JVM then starts ~1.7x faster (spark_jobs/core/jvm.py).
	$(BIN)/python -m spark_jobs.core.jvm || echo "warning: no class-data archive: Spark drivers start the usual (slower) way" >&2
	touch $(STAMP)

venv: java $(STAMP) ## Create .venv from the lock file

run: venv ## Run the whole pipeline on the bundled sample (dvc repro)
	$(BIN)/dvc repro

airflow: venv ## Start Airflow locally (standalone, LocalExecutor, SQLite) with these DAGs; prints the login
	bash scripts/airflow-local.sh

test: venv browser ## Run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv ## Lint and check formatting
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

BENCH_VENV ?= .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): bench/requirements.lock
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --no-deps -r bench/requirements.lock
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP) ## The peer engines' venv (Daft, Ray Data) for bench/peers.py, apart from .venv

bench: venv bench-venv ## Throughput benchmarks, peers included (writes bench/results/; needs `make run` first)
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/features_throughput.py
	$(BIN)/python bench/score_throughput.py
	$(BIN)/python bench/peers.py --images 16000 64000 --bench-python $(BENCH_VENV)/bin/python
	$(BIN)/python bench/peers.py --workload photos --images 750 3000 --bench-python $(BENCH_VENV)/bin/python

bench-lock: ## Re-resolve bench/requirements.lock (what the project's code uses pinned as in requirements.lock)
	$(PYTHON) -m venv .lockenv && .lockenv/bin/pip install --quiet pip-tools
	grep -E '^(pillow|numpy|pandas|pydantic|pyyaml|scipy|torch)==' requirements.lock > .lockenv/bench-constraints.txt
	rm -f bench/requirements.lock
	.lockenv/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
		-c .lockenv/bench-constraints.txt -o bench/requirements.lock bench/requirements.in

lock: ## Re-resolve requirements.lock (.venv: the project + dev) and requirements-deploy.lock (the image: the project + deploy) from pyproject.toml (slow: ~10 min)
	$(PYTHON) -m venv .lockenv && .lockenv/bin/pip install --quiet pip-tools
	.lockenv/bin/pip-compile --extra dev --strip-extras --allow-unsafe --no-emit-index-url -c constraints.txt -o requirements.lock pyproject.toml
	.lockenv/bin/pip-compile --extra deploy --strip-extras --allow-unsafe --no-emit-index-url -c constraints.txt -c requirements.lock -o requirements-deploy.lock pyproject.toml

clean: ## Remove the venv and pipeline outputs
	rm -rf $(VENV) $(BENCH_VENV) .lockenv data .pytest_cache .airflow dist

.PHONY: help java browser venv run airflow test lint bench bench-venv bench-lock lock clean
