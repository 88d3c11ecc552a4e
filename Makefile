# dask-pbs-kit: `make demo` runs the production template on the fake PBS; `make test`
# runs every test. Both set up what they need on the first run and are quick after.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
FAKEPBS := $(CURDIR)/tests/fakepbs/bin
# The demo job: 3 chunks on the fake PBS (INTERFACE=auto finds this machine's loopback).
DEMO_SELECT ?= select=3:ncpus=2:mem=4gb
DEMO_VARS ?=

.PHONY: demo test test-python test-bats lint bench clean venv test-deps

$(VENV)/.run-installed: requirements/run.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/run.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed requirements/test.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	touch $@

node_modules/bats/bin/bats: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

venv: $(VENV)/.run-installed
test-deps: $(VENV)/.test-installed node_modules/bats/bin/bats

demo: venv
	@rm -f dask-wordcount.o*
	@echo "make demo: submitting scripts/launch-dask-wordcount.pbs to the fake PBS ($(DEMO_SELECT))"
	@PATH="$(FAKEPBS):$$PATH" qsub -W block=true -l $(DEMO_SELECT) $(if $(DEMO_VARS),-v $(DEMO_VARS)) \
		scripts/launch-dask-wordcount.pbs; status=$$?; \
	cat dask-wordcount.o*; echo "make demo: job exit status $$status"; exit $$status

test: test-deps
	$(VENV)/bin/python -m pytest -q tests
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" node_modules/bats/bin/bats tests/bats

lint: test-deps
	$(VENV)/bin/shellcheck -S warning scripts/*.pbs scripts/lib/*.sh tests/fakepbs/bin/* .ci/run

$(VENV)/.bench-installed: $(VENV)/.run-installed requirements/bench.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf dask-logs dask-wordcount.o* scheduler.json .pytest_cache
