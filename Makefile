# The two commands of the README:
#   make demo   sets up .venv and runs the whole OFAS pipeline on Fashion-MNIST (about 10 minutes on 2 CPU cores)
#   make test   sets up .venv and runs the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the releases that lie on the development machines' disk;
# other versions pull gigabytes or fail to import together.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test lint demo demo-smoke fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
