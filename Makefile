# Set-up and day-to-day commands. `make test` and `make serve` create the virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-gpu serve clean lint-deploy

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

# The deployment checks alone (they also run in `make test`): hadolint, yamllint, chart schema, render and validation.
lint-deploy: setup
	$(VENV)/bin/hadolint Dockerfile docker/Dockerfile.cuda
	$(VENV)/bin/yamllint -c tests/deploy/yamllint.yaml docker helm/Chart.yaml helm/values.yaml helm/values-gpu.yaml helm/examples
	$(PY) -m pytest -q tests/deploy

serve: setup
	$(VENV)/bin/mamtra serve

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
