# The two commands a new user needs (see README.md):
#   make demo   set up .venv with the pinned stack + Horovod, then run the pipeline on MovieLens-100K
#   make test   set up (if needed), then run every test, slow integration tests included
# Everything else here is a building block of those two.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/ml-100k.yaml
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_USE_LEGACY_KERAS ?= 1
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(abspath $(PY))

.PHONY: setup demo test test-fast fetch bench-synth bench-service serve k8s-conf clean

setup:
	@bash scripts/setup_env.sh

fetch: setup
	$(VENV)/bin/recsys data fetch ml-100k

demo: setup
	@bash scripts/demo.sh $(CONFIG)

test: setup
	@bash scripts/run_tests.sh

test-fast: setup
	@bash scripts/run_tests.sh -m "not slow"

bench-synth: setup
	$(PY) bench/bench_synth.py --ratings 25000000

# The copies kustomize needs inside k8s/ (it reads no file outside a kustomization's folder).
k8s-conf:
	cp conf/default.yaml conf/ml-100k.yaml conf/synth-25m.yaml k8s/base/conf/
	cp k8s/base/job-defaults.yaml k8s/components/spark-submit/job-defaults.yaml

# The HTTP API and page over the demo's index: http://127.0.0.1:8000/
serve: setup
	$(VENV)/bin/recsys serve --config $(CONFIG)

bench-service: setup
	$(PY) bench/bench_service.py --index runs/ml-100k/index

clean:
	rm -rf runs data/prepared .pytest_cache
