# The verbs a newcomer needs. `make demo` and `make test` do all their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mora-installed
PYTEST_ARGS ?=

.PHONY: help install system-deps stack-up stack-down stack-status demo test test-unit lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the platform with its dev tools

system-deps: ## Install Prometheus/promtool (Debian package) when missing; needs root
	@bash infra/local/install_system_deps.sh

stack-up: install ## Start the local stack: S3 server (weed) and a Ray head with dashboard
	$(BIN)/mora stack up

stack-down: ## Stop what `make stack-up` started
	@if [ -x $(BIN)/mora ]; then $(BIN)/mora stack down; fi

stack-status: install ## Show endpoints and health of the local stack
	$(BIN)/mora stack status

demo: install ## Start the stack, import sample data, train a small fleet, serve it and query it
	@bash infra/local/demo.sh

test: install system-deps ## Run the whole test suite (starts and stops its own servers)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install system-deps ## Only the fast unit tests (+ Debian's prometheus for the stack config tests)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mora_platform jobs serve tune infra

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Run the benchmarks (writes JSON under benchmarks/results/)
	$(BIN)/python benchmarks/train_service.py
	$(BIN)/python benchmarks/train_fleet.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/backtest_report.py
	$(BIN)/python benchmarks/tune_trial.py

clean: stack-down ## Stop the stack and remove caches (the stack's data stays in $$MORA_HOME, default ~/.mora)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
