#!/usr/bin/env bash
# The base zoo of the paired fine-tuning protocol (issue 16 item 1; README "Studies"): mbt_mean
# N=64/M=96 (experiment=base_zoo: cpu_study's recipe, 4000 steps, Adam 5e-4 x0.1 at step 3200),
# one run per lambda in runs/zoo/mbt_mean/lmbda=L/ (checkpoints: ~24 MB each, a build product,
# not in git), then its Kodak results from real bitstreams and the convergence check: the
# BD-rate of step T=4000 against step 0.8T=3200 (step=3200.ckpt is kept by checkpoint.keep_steps).
#   experiments/zoo/build.sh                 # train (two sweeps side by side, 1 thread each) + Kodak
#   STAGE=kodak experiments/zoo/build.sh     # only the Kodak evaluation and the check
#   DRY_RUN=1 experiments/zoo/build.sh       # print the commands only
# Re-running resumes each run from its last.ckpt; ~25 min per lambda per core on 2 idle cores.
set -euo pipefail
PY=${PY:-.venv/bin/python}
ZOO=${ZOO:-runs/zoo/mbt_mean}
OUT=${OUT:-experiments/zoo/kodak}
KODAK=${KODAK:-../shared/data/kodak}
STAGE=${STAGE:-all}
LMBDAS=(0.0018 0.0035 0.0067 0.013)   # the zoo's rate points; each lane trains every other one
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$(dirname "$0")/../protocol.sh"  # run, ckpt_list, wait_all

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  run "$PY" train.py -m experiment=base_zoo "lmbda=${LMBDAS[0]},${LMBDAS[2]}" "hydra.sweep.dir=$ZOO" & p1=$!
  run "$PY" train.py -m experiment=base_zoo "lmbda=${LMBDAS[1]},${LMBDAS[3]}" "hydra.sweep.dir=$ZOO" & p2=$!
  wait_all "$p1" "$p2"
fi

if [[ "$STAGE" == all || "$STAGE" == kodak ]]; then
  # two evaluations side by side: step T and step 0.8T, each a 4-lambda RD curve on Kodak
  run "$PY" eval.py "ckpt=$(ckpt_list "$ZOO" last.ckpt "${LMBDAS[@]}")" data=folder "data.val_dir=$KODAK" name=zoo_T4000 \
    progress=false threads=1 "hydra.run.dir=$OUT/T4000" & p1=$!
  run "$PY" eval.py "ckpt=$(ckpt_list "$ZOO" step=3200.ckpt "${LMBDAS[@]}")" data=folder "data.val_dir=$KODAK" name=zoo_T3200 \
    progress=false threads=1 "hydra.run.dir=$OUT/T3200" & p2=$!
  wait_all "$p1" "$p2"
  CHECK=("$PY" experiments/zoo/convergence.py "$OUT/T3200" "$OUT/T4000")
  if [[ -n "${DRY_RUN:-}" ]]; then run "${CHECK[@]}"; else "${CHECK[@]}" | tee "$OUT/convergence.md"; fi
fi
