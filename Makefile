# Set-up and day-to-day commands. `make test` and `make serve` create the virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-gpu serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest

# On a CUDA machine: the fused-kernel equivalence and other GPU tests.
test-gpu: setup
	$(PY) -m pytest -m gpu

serve: setup
	$(VENV)/bin/mamtra serve

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
