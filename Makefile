# dask-pbs-kit: `make demo` runs the production template on the fake PBS; `make test`
# runs every test. Both set up what they need on the first run and are quick after.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
FAKEPBS := $(CURDIR)/tests/fakepbs/bin
# The demo job: 3 chunks on the fake PBS (INTERFACE=auto finds this machine's loopback).
DEMO_SELECT ?= select=3:ncpus=2:mem=4gb
DEMO_VARS ?=

.PHONY: demo demo-jupyter test test-python test-bats lint bench clean venv test-deps browser bytecode

$(VENV)/.run-installed: requirements/run.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/run.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed requirements/test.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	touch $@

$(VENV)/.jupyter-installed: $(VENV)/.run-installed requirements/jupyter.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/jupyter.txt
	touch $@

# The browser test's Chromium: Debian's packages, where apt and root allow (else that test
# says what is missing and is skipped).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -qq chromium chromium-driver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "make: could not install chromium: the browser test will be skipped"; \
	else echo "make: no chromium and chromedriver (apt-get install chromium chromium-driver): the browser test will be skipped"; fi

node_modules/bats/bin/bats: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

venv: $(VENV)/.run-installed

# The kit's and the fake PBS's Python, compiled ahead as a first run would do it where
# PYTHONDONTWRITEBYTECODE is set (as on CI machines): every task's start then reads them.
bytecode: venv
	@$(VENV)/bin/python -m compileall -q helpers scripts/lib tests/fakepbs
test-deps: $(VENV)/.test-installed node_modules/bats/bin/bats browser

demo: bytecode
	@rm -f dask-wordcount.o*
	@echo "make demo: submitting scripts/launch-dask-wordcount.pbs to the fake PBS ($(DEMO_SELECT))"
	@PATH="$(FAKEPBS):$$PATH" qsub -W block=true -l $(DEMO_SELECT) $(if $(DEMO_VARS),-v $(DEMO_VARS)) \
		scripts/launch-dask-wordcount.pbs; status=$$?; \
	cat dask-wordcount.o*; echo "make demo: job exit status $$status"; exit $$status

# JupyterLab beside a 3-chunk cluster on the fake PBS; it runs until File > Shut Down in
# JupyterLab (or qdel), and prints how to reach it.
demo-jupyter: $(VENV)/.jupyter-installed bytecode
	@echo "make demo-jupyter: submitting scripts/launch-dask-cluster-path.pbs with JUPYTER=yes to the fake PBS ($(DEMO_SELECT))"
	@job=$$(PATH="$(FAKEPBS):$$PATH" qsub -l $(DEMO_SELECT) -l walltime=01:00:00 -v JUPYTER=yes \
		scripts/launch-dask-cluster-path.pbs) && echo "make demo-jupyter: job $$job" && \
	$(VENV)/bin/python helpers/dashboard_url.py --jupyter --wait 180 && \
	echo "make demo-jupyter: open the URL above; File > Shut Down in JupyterLab ends the job" \
		"(or: PATH=\"$(FAKEPBS):\$$PATH\" qdel $$job)"

test: test-deps bytecode
	$(VENV)/bin/python -m pytest -q tests
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" node_modules/bats/bin/bats tests/bats

lint: test-deps
	$(VENV)/bin/shellcheck -S warning scripts/*.pbs scripts/lib/*.sh tests/fakepbs/bin/* .ci/run

$(VENV)/.bench-installed: $(VENV)/.run-installed requirements/bench.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	touch $@

bench: $(VENV)/.bench-installed  # bench/run.py compiles the modules itself (run by hand too)
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf dask-logs dask-wordcount.o* dask-cluster-*.o* scheduler.json scheduler.*.json .pytest_cache
