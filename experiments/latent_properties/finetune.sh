#!/usr/bin/env bash
# Lattice fine-tuning with the paired protocol (issue 16 item 4): from the base zoo, two arms
# fine-tuned alike (experiment=finetune: 1000 steps, Adam 5e-5, same data order per seed), the
# control with the zoo's own quantizer=noise and the arm with quantizer=hex; then on Kodak:
# the control coded scalar and hex (decode-time lattice), the hex arm coded hex, and the BD-rates
# of each pair with the per-image band (codecx.metrics.bdrate.bd_rate_per_image).
#
#   experiments/latent_properties/finetune.sh                # train (two lanes), Kodak, table
#   STAGE=kodak|table experiments/latent_properties/finetune.sh
#   DRY_RUN=1 experiments/latent_properties/finetune.sh
#   SEEDS=1,2,3 experiments/latent_properties/finetune.sh   # both arms at three seeds (issue 29 item 2):
#       seed 1 writes OUT/NAME, seed s OUT/NAME_seed<s>; the table pairs arms seed by seed and
#       prints the control's seed band (~25 min per lambda per arm per seed on one core)
set -euo pipefail
PY=${PY:-.venv/bin/python}
BASE_DIR=${BASE_DIR:-runs/zoo/mbt_mean}
SWEEP=${SWEEP:-runs/finetune/lattice}
OUT=${OUT:-experiments/latent_properties/finetune}
KODAK=${KODAK:-../shared/data/kodak}
LMBDAS=${LMBDAS:-0.0018,0.0035,0.0067,0.013}
STAGE=${STAGE:-all}
SEEDS=${SEEDS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$(dirname "$0")/../protocol.sh"  # run, require_bases, two_lanes, wait_all, ckpt_template

runs() {  # QUANTIZER SEED: eval.py's ckpt list of that arm's runs, one per lambda
  # shellcheck disable=SC2086  # the lambdas, one word each
  ckpt_template "$SWEEP/base_dir=${BASE_DIR//\//_},experiment=finetune,lmbda={L},quantizer=$1,seed=$2/checkpoints/last.ckpt" ${LMBDAS//,/ }
}

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  require_bases "$BASE_DIR" "$LMBDAS" latent_properties/finetune.sh
  lane() {
    run "$PY" train.py -m experiment=finetune "base_dir=$BASE_DIR" "hydra.sweep.dir=$SWEEP" \
      sweep_report.enabled=false "seed=$SEEDS" "lmbda=$1" quantizer=noise,hex
  }
  two_lanes lane "$LMBDAS"
fi

if [[ "$STAGE" == all || "$STAGE" == kodak ]]; then
  arm() {  # NAME CKPTS [overrides...]: one 4-lambda curve on Kodak in $OUT/NAME
    local name=$1 ckpts=$2; shift 2
    run "$PY" eval.py "ckpt=$ckpts" data=folder "data.val_dir=$KODAK" "name=$name" progress=false threads=1 \
      "hydra.run.dir=$OUT/$name" "$@"
  }
  for seed in ${SEEDS//,/ }; do
    sfx=$([[ $seed == 1 ]] || echo "_seed$seed")  # seed 1 keeps the committed folder names
    arm "control_scalar$sfx" "$(runs noise "$seed")" & p1=$!
    arm "control_hex$sfx" "$(runs noise "$seed")" quantizer=hex & p2=$!
    wait_all "$p1" "$p2"
    arm "hex_finetuned$sfx" "$(runs hex "$seed")"
  done
fi

if [[ "$STAGE" == all || "$STAGE" == table ]]; then
  run "$PY" "$(dirname "$0")/finetune_table.py" "$OUT"
fi
