#!/usr/bin/env bash
# Shallow decoders against mbt_mean with one recipe (issue 12 item 4b): model=shallow, shallow
# with model.residual=false, and jpeg_like trained exactly as the base zoo's mbt_mean
# (experiment=base_zoo: N=64, M=96, 4000 steps of BSDS500 128-px crops, Adam 5e-4 x0.1 at 3200;
# experiments/zoo/build.sh), one run per lambda in runs/zoo/NAME/lmbda=L; then each on Kodak
# (BD-rate against the zoo's experiments/zoo/kodak/T4000, decoder KMACs/px, decode seconds), and
# plain / SGA on the SGA subset of study.sh (against mbt_mean's curves there, study.sh's OUT).
#
#   experiments/shallow_sga/backbones.sh               # train, Kodak, SGA, table
#   STAGE=train|kodak|sga|table experiments/shallow_sga/backbones.sh
#   ANALYSIS=cnn experiments/shallow_sga/backbones.sh  # the plain CNN analysis (cheaper to train)
#   STEPS=2000 ANALYSIS=cnn experiments/shallow_sga/backbones.sh   # another budget: mbt_mean too
#   SGA_NAMES=shallow experiments/shallow_sga/backbones.sh   # SGA only for these (paper: two-layer)
#   DRY_RUN=1 experiments/shallow_sga/backbones.sh     # print the commands only
#
# Training cost per step against mbt_mean's (measured, N=64/M=96, 128-px x 8, one thread): shallow
# with the ELIC analysis 1.33x (29 KMACs/px of g_a against mbt_mean's 11), with ANALYSIS=cnn 0.52x,
# jpeg_like (cnn) 0.49x; mbt_mean ~0.4 s per step with two runs on 2 cores. So the zoo's budget
# (4000 steps) is ~85 min in two lanes with cnn (measured: 2 h with SGA and CI beside it) and
# ~3.5 h with elic, on top of the zoo's 55 min;
# STEPS=2000 ANALYSIS=cnn retrains mbt_mean too (the same recipe and budget for all four) in
# ~70 min. A budget other than the zoo's goes to runs/zoo_<STEPS>, OUT_<STEPS>; re-running resumes.
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/zoo}
OUT=${OUT:-experiments/shallow_sga/backbones}
KODAK=${KODAK:-../shared/data/kodak}
LMBDAS=${LMBDAS:-0.0018,0.0035,0.0067,0.013}
ANALYSIS=${ANALYSIS:-elic}
STEPS=${STEPS:-4000}          # experiment=base_zoo's budget (its lr drop at 0.8 STEPS)
STAGE=${STAGE:-all}
BACKBONES="shallow model=shallow model.analysis=$ANALYSIS
shallow_nores model=shallow model.residual=false model.analysis=$ANALYSIS
jpeg_like model=jpeg_like model.analysis=$ANALYSIS"    # NAME overrides..., one per line
[[ "$ANALYSIS" == elic ]] || { RUNS="${RUNS}_$ANALYSIS"; OUT="${OUT}_$ANALYSIS"; }  # never resume the other analysis
BUDGET=()
if [[ "$STEPS" != 4000 ]]; then  # not the zoo's budget: mbt_mean is trained here too, and is the anchor
  BUDGET=("trainer.max_steps=$STEPS" "schedule.milestones=[$(( STEPS * 4 / 5 ))]" "checkpoint.keep_steps=[]")
  RUNS="${RUNS}_$STEPS"; OUT="${OUT}_$STEPS"
  BACKBONES="mbt_mean model=mbt_mean
$BACKBONES"
  ZOO_KODAK=${ZOO_KODAK:-$OUT/mbt_mean/kodak}; ZOO_SGA=${ZOO_SGA:-$OUT/mbt_mean/sga}
fi
ZOO_KODAK=${ZOO_KODAK:-experiments/zoo/kodak/T4000}   # mbt_mean on Kodak (experiments/zoo/build.sh)
ZOO_SGA=${ZOO_SGA:-experiments/shallow_sga/sga/build2}  # mbt_mean plain / sga on the subset (study.sh, the second zoo build: the one these backbones were compared with)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$(dirname "$0")/../protocol.sh"  # run, two_lanes, wait_all, ckpt_list

names() { cut -d' ' -f1 <<< "$BACKBONES"; }
SGA_NAMES=${SGA_NAMES:-$(names | tr '\n' ' ')}

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  lane() {
    local name overrides
    while read -r name overrides; do
      # shellcheck disable=SC2086  # a backbone's overrides are separated by spaces
      run "$PY" train.py -m experiment=base_zoo $overrides "${BUDGET[@]}" "lmbda=$1" "hydra.sweep.dir=$RUNS/$name"
    done <<< "$BACKBONES"
  }
  two_lanes lane "$LMBDAS"
fi

if [[ "$STAGE" == all || "$STAGE" == kodak ]]; then
  kodak() {  # NAME: the backbone's 4-lambda RD curve on all of Kodak
    run "$PY" eval.py "ckpt=$(ckpt_list "$RUNS/$1" last.ckpt ${LMBDAS//,/ })" data=folder "data.val_dir=$KODAK" \
      "name=$1" progress=false threads=1 "hydra.run.dir=$OUT/$1/kodak"
  }
  mapfile -t ns < <(names)
  for ((i = 0; i < ${#ns[@]}; i += 2)); do
    pids=()
    kodak "${ns[i]}" & pids+=($!)
    if (( i + 1 < ${#ns[@]} )); then kodak "${ns[i+1]}" & pids+=($!); fi
    wait_all "${pids[@]}"
  done
fi

if [[ "$STAGE" == all || "$STAGE" == sga ]]; then
  for name in $SGA_NAMES; do  # study.sh's plain and sga arms on the same subset, for this backbone
    ZOO="$RUNS/$name" OUT="$OUT/$name/sga" SGA_2020=0 STAGE=eval LMBDAS="$LMBDAS" \
      bash "$(dirname "$0")/study.sh"
  done
fi

if [[ "$STAGE" == all || "$STAGE" == table ]]; then
  # shellcheck disable=SC2046
  TABLE=("$PY" "$(dirname "$0")/table.py" backbones "$OUT" "$ZOO_KODAK" "$ZOO_SGA" $(names))
  if [[ -n "${DRY_RUN:-}" ]]; then run "${TABLE[@]}"; else mkdir -p "$OUT"; "${TABLE[@]}" | tee "$OUT/table.md"; fi
fi
