# The two Quickstart commands: `make run` and `make test`. Both start from a clean clone.
PYTHON ?= python3
VENV ?= .venv
PIP_CONSTRAINT ?= $(CURDIR)/.ci/constraints.txt
export PIP_CONSTRAINT
BIN := $(VENV)/bin

.PHONY: run test test-deps venv cluster lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# Install the package with what the training side needs, then train the digits job
# on 2 local worker processes with a local MLflow store (./mlflow.db).
run: $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'
	$(BIN)/hpc-launch

# System packages the tests use (OpenMPI for mpi4py), the Python test extras,
# the real Slurm test cluster, then the whole suite.
test-deps: $(BIN)/python
	@dpkg -s libopenmpi-dev openmpi-bin chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev \
	  chromium >/dev/null; }
	$(BIN)/pip install -q -e '.[train,test,mpi,k8s,cost]'

cluster:
	slurm/testcluster/up

test: test-deps cluster
	HPC_TEST_SLURM=1 HPC_TEST_BROWSER=1 $(BIN)/python -m pytest -q

# ruff, the layer contracts in pyproject.toml (import-linter) and the type checker (mypy).
lint: test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: $(BIN)/python
	$(BIN)/pip install -q -e '.[train,bench]'
	$(BIN)/python benchmarks/bench_dry_run.py

clean:
	rm -rf $(VENV) outputs mlflow.db
