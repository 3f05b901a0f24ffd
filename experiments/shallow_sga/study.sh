#!/usr/bin/env bash
# SGA against plain encoding on the base zoo (issue 12 item 4a): the same four checkpoints
# (runs/zoo/mbt_mean, experiments/zoo/build.sh; the base of the CSE and compensation studies)
# coded plain and with refine=sga, real bitstreams, BD-rate / BD-PSNR and encode seconds per
# image. SGA changes only the encoder: the decoder and the checkpoints are the same in every arm,
# so the training-seed noise band does not apply; what varies is the choice of images.
#
#   experiments/shallow_sga/study.sh              # three evaluations in two lanes, then the table
#   DRY_RUN=1 experiments/shallow_sga/study.sh    # print the commands only
#   STAGE=table experiments/shallow_sga/study.sh  # only the table (reuses the results)
#   STEPS=3000 IMAGES=24 CROP= experiments/shallow_sga/study.sh   # the papers' setting (days on a CPU)
#
# Cost on a CPU: one SGA step of mbt_mean N=64/M=96 on a 256-px crop takes ~0.17 s on one thread,
# so the default (4 lambdas x 4 images x 1000 steps) is ~45 min per SGA arm; the papers' 3000
# steps on full Kodak images would be ~6 CPU-hours per lambda. Hence a fixed subset: the first
# IMAGES Kodak images (kodim01...), CROP-px center crops, and STEPS steps (the tau schedule keeps
# its shape: shallow-ntc's decay starts at step 200, the 2020 original's at 700).
set -euo pipefail
PY=${PY:-.venv/bin/python}
ZOO=${ZOO:-runs/zoo/mbt_mean}
OUT=${OUT:-experiments/shallow_sga/sga}
KODAK=${KODAK:-../shared/data/kodak}
LMBDAS=${LMBDAS:-0.0018,0.0035,0.0067,0.013}
IMAGES=${IMAGES:-4}
CROP=${CROP-256}              # empty: full images
STEPS=${STEPS:-1000}          # shallow-ntc schedule (lr 5e-3, x0.1 at 90%)
STEPS_2020=${STEPS_2020:-$(( STEPS * 2 / 3 ))}   # the 2020 original (lr 1e-3, tau decay from 700)
STAGE=${STAGE:-all}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$(dirname "$0")/../protocol.sh"  # run, require_bases, two_lanes, ckpt_list

COMMON=("ckpt=$(ckpt_list "$ZOO" last.ckpt ${LMBDAS//,/ })" data=folder "data.val_dir=$KODAK" "data.max_val_images=$IMAGES"
        progress=false threads=1)
[[ -n "$CROP" ]] && COMMON+=("data.val_crop_size=$CROP")

arm() {  # NAME [overrides...]: one 4-lambda RD curve in $OUT/NAME
  local name=$1; shift
  run "$PY" eval.py "${COMMON[@]}" "name=$name" "hydra.run.dir=$OUT/$name" "$@"
}

if [[ "$STAGE" == all || "$STAGE" == eval ]]; then
  require_bases "$ZOO" "$LMBDAS" shallow_sga/study.sh
  lane() {
    if [[ $1 == 1 ]]; then
      arm sga refine=sga "refine.sga.steps=$STEPS" "refine.sga.curves=$OUT/sga_curves.csv"
    else
      arm plain
      arm sga_2020 refine=sga refine.sga.schedule=original "refine.sga.steps=$STEPS_2020" refine.sga.lr=1e-3 \
        refine.sga.lr_drop_at=null "refine.sga.curves=$OUT/sga_2020_curves.csv"
    fi
  }
  two_lanes lane 1,2
fi

if [[ "$STAGE" == all || "$STAGE" == table ]]; then
  mkdir -p "$OUT"
  run "$PY" "$(dirname "$0")/table.py" "$OUT" plain sga sga_2020 | tee "$OUT/table.md"
fi
