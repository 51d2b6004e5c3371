# make run : install, then run the main job.  make test : install, then run the tests.
PYTHON ?= python3
PRESET ?= fashion-mnist

.PHONY: setup run test test-stack lint bench

setup:
	bash scripts/setup.sh

run: setup
	adm run --preset $(PRESET)

# every tier (CONTRIBUTING.md): fast, services and stack (tests/stack, 10-15 min)
test: setup
	$(PYTHON) -m pytest -q --durations=15 tests

test-stack: setup
	$(PYTHON) -m pytest -q --durations=15 -m stack tests

lint:
	ruff check components pipelines tests bench scripts
	lint-imports
	@# files follow concepts: past 400 lines, ask whether a file holds one (tests/test_architecture.py fails at 600)
	@for f in $$(git ls-files 'components/*.py' 'pipelines/*.py'); do n=$$(wc -l < $$f); \
	  if [ $$n -gt 400 ]; then echo "note: $$f has $$n lines; does it hold one concept?"; fi; done

bench:
	$(PYTHON) bench/bench_components.py
