# make run : install, then run the main job.  make test : install, then run the tests.
PYTHON ?= python3
PRESET ?= fashion-mnist

.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	adm run --preset $(PRESET)

test: setup
	$(PYTHON) -m pytest -q --durations=15 tests

lint:
	ruff check components pipelines tests bench scripts
	lint-imports

bench:
	$(PYTHON) bench/bench_components.py
