# metarun: `make help` lists the targets.
PYTHON ?= python
SHARED_DATA ?= $(abspath ../shared/data)

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-full smoke tb bench reproduce clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## Install metarun and the test tools into the active Python (editable)
	$(PYTHON) -m pip install -e ".[dev]"

test: ## Run the fast tests: offline, CPU, a few minutes
	$(PYTHON) -m pytest

test-slow: ## Run only the slow tests that train on the real data in ../shared/data
	METARUN_SHARED_DATA=$(SHARED_DATA) $(PYTHON) -m pytest -m slow

test-full: ## Run every test, the slow real-data ones included
	METARUN_SHARED_DATA=$(SHARED_DATA) $(PYTHON) -m pytest -m "slow or not slow"

smoke: ## Run every experiment config for a few steps on synthetic data
	metarun -m 'experiment=glob(*,exclude=*sinusoid*)' debug=smoke logger=none
	metarun -m 'experiment=glob(*sinusoid*)' debug=smoke data=sinusoid logger=none

tb: ## Open TensorBoard on all runs under outputs/
	tensorboard --logdir outputs

L2L_PYTHON ?= /tmp/l2l/bin/python

bench: ## Measure MAML and ProtoNet throughput against learn2learn (see benchmarks/README.md)
	$(PYTHON) benchmarks/compare.py --reference-python $(L2L_PYTHON) --omniglot $(SHARED_DATA)/omniglot

reproduce: ## Train the runs of benchmarks/reproduce.yaml not yet recorded (resuming), then rewrite RESULTS.md (hours)
	$(PYTHON) benchmarks/reproduce.py --data $(SHARED_DATA)

clean: ## Remove run folders, caches and build files
	rm -rf outputs multirun build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
