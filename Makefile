SHELL := /bin/bash
# One entry point per job; each target sets up what it needs first (scripts/setup_env.sh is idempotent
# and fast when nothing changed). Every ROS process started from here uses loopback-only DDS and runs in
# a private network namespace where the platform allows it (scripts/netns_run.sh).
PY := .venv/bin/python
NETNS := scripts/netns_run.sh
PYTEST_ARGS ?=

.PHONY: setup test lint bench demo model clean test-jazzy

setup:
	@bash scripts/setup_env.sh

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(NETNS) $(PY) -m pytest $(PYTEST_ARGS)

# The ROS-facing tests (marker ros) again on ROS 2 Jazzy wheels (rclpy 7.1.6) in a second venv.
JAZZY_PY := .venv-jazzy/bin/python
test-jazzy:
	@FASTPILLARS_VENV=$(CURDIR)/.venv-jazzy FASTPILLARS_ROS_DISTRO=jazzy bash scripts/setup_env.sh
	$(NETNS) $(JAZZY_PY) -m pytest -m ros $(PYTEST_ARGS)

demo: setup
	$(NETNS) $(PY) -m fastpillars_ros.cli demo

# Re-train the shipped tiny model from scratch (MODEL_CARD.md): simulate the data, train, evaluate, install.
FP := $(PY) -m fastpillars_ros.cli
model: setup
	$(FP) simulate --out out/sim/train --scenes 1500 --seed 0 --sensor hdl64 --workers 2 --skip-existing
	$(FP) simulate --out out/sim/test --scenes 200 --seed 1000 --sensor hdl64 --workers 2 --skip-existing
	$(FP) train --config tiny --data out/sim/train --val out/sim/test --max-val-frames 40 --epochs 5 \
	  --out out/train/tiny --threads 2 --workers 1 --gt-sampling --seed 0
	$(FP) eval --config tiny --checkpoint out/train/tiny/last.pt --data out/sim/test --no-progress \
	  --out out/train/tiny/eval_sim_test.json --plot out/train/tiny/pr_sim_test.png
	cp out/train/tiny/last.pt fastpillars_ros/weights/tiny.pt

bench: setup
	@$(PY) -m pip install -q -r requirements/bench.txt 2> >(grep -v "is ignored: it is neither" >&2) || \
	  echo "[bench] spconv anchor unavailable: its rows will be skipped"
	$(NETNS) $(PY) test/bench/run_all.py

clean:
	rm -rf build install log out .pytest_cache .ruff_cache
