# Two commands do all set-up on a fresh machine: `make sweep` and `make test`.
# torch is installed first and on its own: here `torch==2.13.0` is a local CPU build; on a GPU machine use
# `make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" EXTRAS=test,gpu ...`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= test
STAMP  := $(VENV)/.installed-$(EXTRAS)
ARGS   ?=

.PHONY: setup sweep test test-unit bench bench-analysis clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

sweep: $(STAMP)   ## the default sweep (6 trials) on local Ray; ARGS="..." adds Hydra overrides
	$(PY) -m orchestrator $(ARGS)

test: $(STAMP)    ## unit tests, then the integration tests (real Ray, DeepSpeed, mlflow server)
	$(PY) -m pytest -q -m "not slow" tests
	$(PY) -m pytest -q -m slow tests --durations=5

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)   ## evaluation speed: scorer and sampler vs naive loops, sweep overhead -> bench.json
	$(PY) -m bench.evaluation

bench-analysis: $(STAMP)   ## analysis fit on 2M..20M generated records
	$(PY) -m bench.analysis

clean:
	rm -rf runs mlruns bench.json
