# codecx — `make help` lists the targets. Everything runs in a local virtualenv (.venv),
# created and filled on first use, so `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.codecx-installed
ARGS   ?=

.PHONY: help install train test test-quick test-slow lint bench gpu-check docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,docs]'
# test oracle: NeuralCompression (released MS-ILLM/HiFiC code); its pins predate torch 2.14, the
# modules tests/test_reference_nc.py uses need only fvcore beyond codecx's own dependencies
	$(PY) -m pip install --quiet --no-deps neuralcompression==0.3.1
	$(PY) -m pip install --quiet fvcore
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install codecx with its dependencies

train: $(STAMP)  ## the main job: train mbt_mean on the embedded sample data (ARGS="..." for overrides)
	$(PY) train.py $(ARGS)

test: $(STAMP)  ## the test suite: fast and medium tiers (tiny models, 64-px images; no timing asserts)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-quick: $(STAMP)  ## the fast tier only (skips the medium tier: fuzzing, real train/eval runs); 2 workers
	$(PY) -m pytest -m "not slow and not medium" -q -n 2 $(ARGS)

test-slow: $(STAMP)  ## slow checks: multirun, DDP on 2 CPU processes, resume after a kill, wheel install
	$(PY) -m pytest -m slow -q $(ARGS)

# mypy's typed core; not yet covered: codecx/coding/{context,rans,container,fuzz}.py, codecx/models, codecx/inference,
# codecx/regularizers, codecx/metrics (but bdrate.py), codecx/lit, codecx/data and the entry points
MYPY_PATHS := codecx/types.py codecx/lattice_math.py codecx/conf codecx/config codecx/quantizers codecx/transforms \
              codecx/losses codecx/metrics/bdrate.py codecx/coding/__init__.py codecx/coding/options.py \
              codecx/coding/scale_keys.py codecx/coding/lattice_coder.py

lint: $(STAMP)  ## ruff check (rules E, F, W; pyproject.toml) and mypy on the typed core (MYPY_PATHS)
	$(PY) -m ruff check .
	$(PY) -m mypy $(MYPY_PATHS)

bench: $(STAMP)  ## timed comparisons, printed as ratios against baselines measured in the same run
	$(PY) -m benchmarks $(ARGS)

gpu-check: $(STAMP)  ## a few minutes on a CUDA GPU: bf16, compile, one-GPU DDP, the coder on GPU tensors, bench --device cuda
	$(PY) scripts/gpu_check.py $(ARGS)

docs: $(STAMP)  ## the docs site (MkDocs, offline) in site/: open site/index.html; a broken link fails it
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict $(ARGS)

clean:  ## remove run outputs (keeps .venv)
	rm -rf runs outputs multirun lightning_logs .pytest_cache site
