#!/usr/bin/env bash
# The base zoo of the paired fine-tuning protocol (issue 16 item 1; docs "Studies"): mbt_mean
# N=64/M=96 (experiment=base_zoo: cpu_study's recipe, 4000 steps, Adam 5e-4 x0.1 at step 3200),
# one run per lambda in runs/zoo/mbt_mean/lmbda=L/ (checkpoints: ~24 MB each, a build product,
# not in git), then its Kodak results from real bitstreams and the convergence check: the
# BD-rate of step T against step 0.8T (checkpoint.keep_steps keeps step=0.8T.ckpt).
#   experiments/zoo/build.sh                 # train (two sweeps side by side, 1 thread each) + Kodak
#   STAGE=kodak experiments/zoo/build.sh     # only the Kodak evaluation and the check
#   DRY_RUN=1 experiments/zoo/build.sh       # print the commands only
#   EXPERIMENT=base_zoo_long experiments/zoo/build.sh   # the zoo continued to T=10000 (its first
#       4000 steps are base_zoo's: each run starts from runs/zoo's last.ckpt) in runs/zoo_long/
#   T=20000 EXPERIMENT=base_zoo_long experiments/zoo/build.sh   # further: resumes at the last T,
#       keeps steps 0.6T and 0.8T; the check prints the whole Kodak curve from step 4000 on
# Re-running resumes each run from its last.ckpt; ~25 min per lambda per core on 2 idle cores
# (base_zoo; base_zoo_long: ~40 min more per lambda).
set -euo pipefail
PY=${PY:-.venv/bin/python}
EXPERIMENT=${EXPERIMENT:-base_zoo}
case "$EXPERIMENT" in   # T, the steps kept for the check (0.8T last), where the runs and results go
  base_zoo) T=4000; KEPT=(3200); ZOO=${ZOO:-runs/zoo/mbt_mean}; OUT=${OUT:-experiments/zoo/kodak}; FROM=""
    STEPS=();;
  base_zoo_long) T=${T:-10000}; KEPT=($((T * 6 / 10)) $((T * 8 / 10))); ZOO=${ZOO:-runs/zoo_long/mbt_mean}
    OUT=${OUT:-experiments/zoo/kodak}; FROM=${FROM:-runs/zoo/mbt_mean}  # the base zoo: every run's first 4000 steps
    STEPS=("trainer.max_steps=$T" "checkpoint.keep_steps=[${KEPT[0]},${KEPT[1]}]");;
  *) echo "build.sh: EXPERIMENT=$EXPERIMENT is not a zoo recipe; use base_zoo or base_zoo_long" >&2; exit 2;;
esac
KODAK=${KODAK:-../shared/data/kodak}
STAGE=${STAGE:-all}
LMBDAS=(0.0018 0.0035 0.0067 0.013)   # the zoo's rate points; each lane trains every other one
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$(dirname "$0")/../protocol.sh"  # run, ckpt_list, wait_all

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  if [[ -n "$FROM" ]]; then  # continue the shorter zoo: its last.ckpt becomes each run's resume point
    require_bases "$FROM" "$(IFS=,; echo "${LMBDAS[*]}")" "build.sh (EXPERIMENT=$EXPERIMENT)"
    for l in "${LMBDAS[@]}"; do
      dst="$ZOO/lmbda=$l/checkpoints"
      [[ -f "$dst/last.ckpt" ]] || { run mkdir -p "$dst"; run cp "$FROM/lmbda=$l/checkpoints/last.ckpt" "$dst/"; }
    done
  fi
  run "$PY" train.py -m "experiment=$EXPERIMENT" "lmbda=${LMBDAS[0]},${LMBDAS[2]}" "hydra.sweep.dir=$ZOO" "${STEPS[@]}" & p1=$!
  run "$PY" train.py -m "experiment=$EXPERIMENT" "lmbda=${LMBDAS[1]},${LMBDAS[3]}" "hydra.sweep.dir=$ZOO" "${STEPS[@]}" & p2=$!
  wait_all "$p1" "$p2"
fi

if [[ "$STAGE" == all || "$STAGE" == kodak ]]; then
  # the RD curve (4 lambdas, Kodak) of step T and of each kept step, two evaluations side by side
  kodak() {  # FILE STEP
    run "$PY" eval.py "ckpt=$(ckpt_list "$ZOO" "$1" "${LMBDAS[@]}")" data=folder "data.val_dir=$KODAK" \
      "name=zoo_T$2" progress=false threads=1 "hydra.run.dir=$OUT/T$2"
  }
  pids=()
  for k in "${KEPT[@]}"; do
    kodak "step=$k.ckpt" "$k" & pids+=($!)
    if [[ ${#pids[@]} -ge 2 ]]; then wait_all "${pids[@]}"; pids=(); fi
  done
  kodak last.ckpt "$T" & pids+=($!)
  wait_all "${pids[@]}"
  # the training curve on Kodak: the kept steps and T, and for a continued zoo every step from the
  # base zoo's T (4000) on that an earlier build evaluated
  steps=("${KEPT[@]}" "$T")
  if [[ -n "$FROM" ]]; then
    for d in "$OUT"/T*/results.json; do
      [[ -f "$d" ]] || continue
      k=${d#"$OUT"/T}; k=${k%/results.json}
      [[ "$k" =~ ^[0-9]+$ && "$k" -ge 4000 && "$k" -lt "$T" ]] && steps+=("$k")
    done
  fi
  mapfile -t steps < <(printf '%s\n' "${steps[@]}" | sort -n -u)
  CHECK=("$PY" experiments/zoo/convergence.py "${steps[@]/#/$OUT/T}")
  if [[ -n "${DRY_RUN:-}" ]]; then run "${CHECK[@]}"; else "${CHECK[@]}" | tee "$OUT/convergence_T$T.md"; fi
fi
