SHELL := /bin/bash
# One entry point per job; each target sets up what it needs first (scripts/setup_env.sh is idempotent
# and fast when nothing changed). Every ROS process started from here uses loopback-only DDS and runs in
# a private network namespace where the platform allows it (scripts/netns_run.sh).
PY := .venv/bin/python
NETNS := scripts/netns_run.sh
PYTEST_ARGS ?=

.PHONY: setup test lint bench demo clean

setup:
	@bash scripts/setup_env.sh

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(NETNS) $(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(NETNS) $(PY) -m fastpillars_ros.cli demo

bench: setup
	@$(PY) -m pip install -q -r requirements/bench.txt 2> >(grep -v "is ignored: it is neither" >&2) || \
	  echo "[bench] spconv anchor unavailable: its rows will be skipped"
	$(NETNS) $(PY) test/bench/run_all.py

clean:
	rm -rf build install log out .pytest_cache .ruff_cache
