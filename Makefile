# The two commands of the README:
#   make demo   sets up .venv and runs the whole OFAS pipeline on Fashion-MNIST (about 10 minutes on 2 CPU cores)
#   make test   sets up .venv and runs the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the releases that lie on the development machines' disk;
# other versions pull gigabytes or fail to import together.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-data lint demo demo-smoke fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian for the tests that read it, when this user may install it; they skip otherwise.
test-data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; the tests that need it will skip"; \
	fi

# the suite in TEST_WORKERS parallel processes (pytest-xdist); TEST_WORKERS=0 runs it in one. Work stealing: with
# xdist's default (load) one worker idled while the other still held a queue of slow tests: 358 s quiet on 2 cores
# against 285 s with worksteal (session 14, the same 793 tests)
TEST_WORKERS ?= 2
test: setup test-data
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

# ---------------------------------------------------------------------------------------------------- the demo
# make demo: the whole pipeline (train_backbone -> e2e_finetune -> rl_finetune -> evaluate) on Fashion-MNIST
# from Debian's package with a CIFAR ResNet-20 on grey images (in_chans=1); about 10 minutes on 2 CPU cores.
# make demo-smoke: the same commands at a tiny budget (CI). Both run every recipe as two gloo processes with one
# thread each (steadier than one process with two OpenMP threads on a shared 2-core machine). Override, e.g.
#   make demo DEMO_DATASET=../shared/data/cifar10-jpeg.tar.gz DEMO_CHANS=3
#   make demo LAUNCH=.venv/bin/python          (one process)
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO_DATASET ?= fashion-mnist
DEMO_MODEL ?= cifar:resnet20
DEMO_CHANS ?= 1
DEMO_OUT ?= runs/demo
LAUNCH ?= $(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
	--dynamo_backend no --main_process_port 0
DEMO_DATA_FLAGS = --dataset $(DEMO_DATASET) --in-chans $(DEMO_CHANS)
DEMO_BUDGET ?= --train-subset 20000 --eval-subset 2000 --batch-size 128
DEMO_BACKBONE ?= --epochs 4
DEMO_E2E ?= --epochs 2
DEMO_RL ?= --epochs 1
DEMO_EVAL ?= --calibrate-head --thresholds 0.04:0.96:0.02 --eval-subset 1000 --latency-samples 32
# the comparison at the end of the demo: the budget of e2e + RL (3 epochs), the method to deploy at 75 % and 50 % of
# the original's measured latency, choices on the validation carve, results on the test images
DEMO_COMPARE_DATA = --dataset $(DEMO_DATASET) --in-chans $(DEMO_CHANS) --train-subset 20000 --eval-subset 2000 \
	--batch-size 128
DEMO_COMPARE ?= --budget-epochs 3 --targets 0.75 0.5 --methods original static depth_prune ofas --no-progress
SMOKE_BUDGET ?= --train-subset 256 --eval-subset 128 --batch-size 32 --max-steps 8 --no-progress
SMOKE_EVAL ?= --thresholds 0.4,0.5,0.6 --eval-subset 128 --latency-samples 2 --latency-runs 2 --latency-warmup 1

fashion-mnist:
	@if [ "$(DEMO_DATASET)" != "fashion-mnist" ] || [ -d $(FASHION_MNIST_DIR) ]; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Fashion-MNIST is missing: installing Debian's dataset-fashion-mnist"; \
		apt-get update && apt-get install -y dataset-fashion-mnist; \
	else \
		echo "The demo needs Fashion-MNIST in $(FASHION_MNIST_DIR), from Debian's package dataset-fashion-mnist."; \
		echo "Install it (sudo apt-get install dataset-fashion-mnist) and rerun, or point the demo at other data:"; \
		echo "  make demo DEMO_DATASET=zalando-datasets/fashion_mnist   (a Hub id, when the Hub is reachable)"; \
		echo "  make demo DEMO_DATASET=path/to/imagefolder DEMO_CHANS=3"; \
		exit 1; \
	fi

demo: setup fashion-mnist
	$(LAUNCH) recipes/train_backbone.py --model $(DEMO_MODEL) $(DEMO_DATA_FLAGS) $(DEMO_BUDGET) $(DEMO_BACKBONE) \
		--output $(DEMO_OUT)/base --overwrite
	$(LAUNCH) recipes/e2e_finetune.py --init $(DEMO_OUT)/base $(DEMO_BUDGET) $(DEMO_E2E) \
		--output $(DEMO_OUT)/e2e --overwrite
	$(LAUNCH) recipes/rl_finetune.py --init $(DEMO_OUT)/e2e $(DEMO_BUDGET) $(DEMO_RL) \
		--output $(DEMO_OUT)/rl --overwrite
	$(LAUNCH) recipes/evaluate.py $(DEMO_OUT)/rl $(DEMO_EVAL)
	$(LAUNCH) recipes/train_backbone.py --model cifar:resnet8 $(DEMO_DATA_FLAGS) $(DEMO_BUDGET) $(DEMO_BACKBONE) \
		--output $(DEMO_OUT)/static8 --overwrite
	$(LAUNCH) recipes/train_backbone.py --model cifar:resnet14 $(DEMO_DATA_FLAGS) $(DEMO_BUDGET) $(DEMO_BACKBONE) \
		--output $(DEMO_OUT)/static14 --overwrite
	rm -rf $(DEMO_OUT)/compare-runs  # its fine-tunes start from the base trained above (compare refuses old ones)
	$(PY) recipes/compare.py --init $(DEMO_OUT)/base $(DEMO_COMPARE_DATA) --ofas-runs $(DEMO_OUT)/e2e $(DEMO_OUT)/rl \
		--static resnet8=$(DEMO_OUT)/static8 --static resnet14=$(DEMO_OUT)/static14 $(DEMO_COMPARE) \
		--output $(DEMO_OUT)/compare --work $(DEMO_OUT)/compare-runs
	@echo "The comparison: $(DEMO_OUT)/compare/compare.md and compare.png"

demo-smoke: setup fashion-mnist
	$(LAUNCH) recipes/train_backbone.py --model cifar:resnet8 $(DEMO_DATA_FLAGS) $(SMOKE_BUDGET) \
		--output $(DEMO_OUT)-smoke/base --overwrite
	$(LAUNCH) recipes/e2e_finetune.py --init $(DEMO_OUT)-smoke/base $(SMOKE_BUDGET) \
		--output $(DEMO_OUT)-smoke/e2e --overwrite
	$(LAUNCH) recipes/rl_finetune.py --init $(DEMO_OUT)-smoke/e2e $(SMOKE_BUDGET) \
		--output $(DEMO_OUT)-smoke/rl --overwrite
	$(LAUNCH) recipes/evaluate.py $(DEMO_OUT)-smoke/rl $(SMOKE_EVAL)
	rm -rf $(DEMO_OUT)-smoke/compare-runs
	$(PY) recipes/compare.py --init $(DEMO_OUT)-smoke/base --dataset $(DEMO_DATASET) --in-chans $(DEMO_CHANS) \
		--train-subset 256 --eval-subset 128 --batch-size 32 --ofas-runs $(DEMO_OUT)-smoke/e2e $(DEMO_OUT)-smoke/rl \
		--static resnet8=$(DEMO_OUT)-smoke/base --budget-steps 4 --targets 0.9 --methods original static depth_prune ofas \
		--latency-samples 2 --latency-runs 1 --latency-rounds 1 --server-batch 4 --thresholds 0.4,0.5,0.6 \
		--choice-images 64 --no-progress --output $(DEMO_OUT)-smoke/compare --work $(DEMO_OUT)-smoke/compare-runs
