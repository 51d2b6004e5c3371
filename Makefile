# make run : install, then run the main job.  make test : install, then run the tests.
PYTHON ?= python3
DATA ?= adm-data

.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	adm data ingest fashion-mnist $(DATA)/fashion-mnist --resolution 32 --split train,test
	adm data describe $(DATA)/fashion-mnist
	adm data ingest shapes $(DATA)/shapes --resolution 16 --num-images 256
	adm train all --preset smoke --data $(DATA)/shapes

test: setup
	$(PYTHON) -m pytest -q tests

lint:
	ruff check components pipelines tests bench

bench:
	$(PYTHON) bench/bench_components.py
