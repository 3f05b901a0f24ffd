#!/usr/bin/env bash
# The compensation study (issue 13, item 7) with the paired fine-tuning protocol (docs
# "Studies"): every arm starts from the base zoo's checkpoint of its lambda (runs/zoo/mbt_mean,
# experiments/zoo/build.sh), sees the same data order, crops and steps; only the latent
# transform differs. The control (no transform) with two seeds gives the protocol's noise band.
#
#   experiments/compensation/study.sh            # every arm, then the Kodak report
#   DRY_RUN=1 experiments/compensation/study.sh  # print the commands only
#   STAGE=report experiments/compensation/study.sh
#   ARMS=$'transform=lpc\ntransform=lrp' experiments/compensation/study.sh   # chosen arms
#   SEEDS=1,2,3 ARM_SEEDS=1,2,3 ARMS=$'transform=lrp transform.lrp.latent_mse=1\ntransform=fpc' \
#     SWEEP=runs/finetune/compensation_seeds3 OUT=experiments/compensation/seeds3 \
#     experiments/compensation/study.sh      # the three-seed round (issue 29 item 2, README)
#
# What every arm shares (PROTOCOL): quantizer=mixed (the transforms learn the rounding
# residual: g_s must see the rounded y_hat, docs "Latent compensation"); 256-px crops, batch 4
# (LRP's and the LPC predictor's 5x5/3x3 convolutions need latents larger than their receptive
# field; the same pixels per step as the CSE protocol's 128-px x 8); 500 steps at the protocol's
# 5e-5 for the codec and schedule.group_lr.transforms=5e-4 (the zoo's own training rate) for the
# transform, which starts at zero (LRP's last layer, LPC's mu_r) so that every arm starts from
# the base checkpoint's exact output. The control passes transform=[] so the report can pick it.
# Run from the repository root; re-running resumes each run from its last.ckpt.
set -euo pipefail
PY=${PY:-.venv/bin/python}
CODECX=${CODECX:-.venv/bin/codecx}
BASE_DIR=${BASE_DIR:-runs/zoo/mbt_mean}
SWEEP=${SWEEP:-runs/finetune/compensation}
OUT=${OUT:-experiments/compensation}
LMBDAS=${LMBDAS:-0.0018,0.0035,0.0067,0.013}
SEEDS=${SEEDS:-1,2}           # the control (its seed 2 vs seed 1 is the noise band)
ARM_SEEDS=${ARM_SEEDS:-1}     # the method arms (each paired with the control of the same seed)
# Each transform (none, lpc both readings, lrp, fpc) plain, with the latent-MSE term, and with
# inverse training; then the two together. transform=[] data.invert=true is the control of the
# inverse-training arms (README). The term without a learned compensation (transform=latent_mse,
# fpc + latent_mse) trains nothing and is refused since issue 29: the first run's four such
# cells were null arms, gradient-identical to their controls (README, "The latent-MSE term").
DEFAULT_ARMS='transform=lpc
transform=lrp
transform=fpc
transform=lpc transform.lpc.params=predicted
transform=lpc transform.lpc.latent_mse=1
transform=lpc data.invert=true
transform=[] data.invert=true
transform=lrp transform.lrp.latent_mse=1
transform=lpc transform.lpc.params=predicted transform.lpc.latent_mse=1
transform=lrp data.invert=true
transform=fpc data.invert=true
transform=lpc transform.lpc.params=predicted data.invert=true
transform=lpc transform.lpc.latent_mse=1 data.invert=true
transform=lrp transform.lrp.latent_mse=1 data.invert=true
transform=lpc transform.lpc.params=predicted transform.lpc.latent_mse=1 data.invert=true'
ARMS=${ARMS:-$DEFAULT_ARMS}   # one arm per line, in the order they run
STAGE=${STAGE:-all}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PROTOCOL=(experiment=finetune "base_dir=$BASE_DIR" "hydra.sweep.dir=$SWEEP" sweep_report.enabled=false
          quantizer=mixed data.crop_size=256 data.batch_size=4 trainer.max_steps=500
          schedule.group_lr.transforms=5e-4)

source "$(dirname "$0")/../protocol.sh"  # run, require_bases, two_lanes

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  require_bases "$BASE_DIR" "$LMBDAS" study.sh
  # Two lanes side by side (one thread each, 2 cores), each a multirun over half the lambdas.
  lane() {
    local lmbdas=$1 arm
    run "$PY" train.py -m "${PROTOCOL[@]}" "lmbda=$lmbdas" "seed=$SEEDS" 'transform=[]'
    while IFS= read -r arm; do
      [[ -z "$arm" ]] && continue
      # shellcheck disable=SC2086  # an arm is a few overrides separated by spaces
      run "$PY" train.py -m "${PROTOCOL[@]}" "lmbda=$lmbdas" "seed=$ARM_SEEDS" $arm
    done <<< "$ARMS"
  }
  two_lanes lane "$LMBDAS"
fi

if [[ "$STAGE" == all || "$STAGE" == report ]]; then
  # BD-rate of each arm per seed against the control of the same seed (the control's seed 2
  # against seed 1 is the noise band), with the MSE_t / MSE_a / MSE_q decomposition.
  run "$CODECX" report "$SWEEP" --baseline 'transform=[],data.invert=False' --replicates seed --decompose \
    --data-val-dir ../shared/data/kodak --eval-dir "$OUT/kodak" -o "$OUT/results" --no-progress
  # The same runs against the inverse-training control (transform=[] data.invert=true): each
  # method's effect under inverse training, on the same (doubled) data stream (when it was run).
  compgen -G "$SWEEP/*data.invert=true*" > /dev/null || [[ -n "${DRY_RUN:-}" ]] || exit 0
  run "$CODECX" report "$SWEEP" --baseline 'transform=[],data.invert=True' --replicates seed --decompose \
    --data-val-dir ../shared/data/kodak --eval-dir "$OUT/kodak" -o "$OUT/results/invert" --no-progress
fi
