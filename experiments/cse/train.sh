#!/usr/bin/env bash
# Train the CSE study's sweep for one seed: reg=none and reg=cse (alpha=1) at the paper's 4 lambdas
# (experiment=cpu_study: mbt_mean N=64/M=96, BSDS500 train, 1200 steps). One torch thread per run,
# so two seeds run side by side on 2 cores:
#   experiments/cse/train.sh 1 & experiments/cse/train.sh 2 & wait
# Run from the repository root. Re-running resumes each run from its last.ckpt.
set -euo pipefail
seed=${1:?usage: experiments/cse/train.sh SEED}
PY=${PY:-.venv/bin/python}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" train.py -m experiment=cpu_study \
  reg=none,cse alpha=1 seed="$seed" lmbda=0.0018,0.0035,0.0067,0.013 \
  hydra.sweep.dir=experiments/cse/runs
