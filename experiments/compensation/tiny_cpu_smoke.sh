#!/usr/bin/env bash
# A smoke run of the compensation transforms on CPU (NOT a measurement of the effect reported by
# Rethinking Latent Variable, WACV 2026:
# tiny model, a few hundred steps, 4 Kodak images, one seed, no noise band).
# Pretrain a small scalar mbt_mean, fine-tune it with transform=none / lpc / lrp (quantizer=mixed,
# same steps and seed), evaluate from real bitstreams with the MSE_t/a/q decomposition.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/compensation_smoke}
PY=".venv/bin/python"
export OMP_NUM_THREADS=1
COMMON=(experiment=cpu_study model.N=32 model.M=48 data.crop_size=64 data.max_val_images=1
        eval.final_max_images=1 trainer.val_check_interval=1000 checkpoint.every_n_steps=1000)
[ -f $OUT/pretrain/checkpoints/last.ckpt ] || \
$PY train.py "${COMMON[@]}" quantizer=mixed trainer.max_steps=${PRE_STEPS:-400} hydra.run.dir=$OUT/pretrain
BASE=$OUT/pretrain/checkpoints/last.ckpt
# name: transform overrides
VARIANTS=("none:transform=[]" "lpc:transform=lpc" "lrp:transform=lrp" "fpc:transform=fpc"
          "lpc_predicted:transform=lpc transform.lpc.params=predicted"
          "lrp_lmse:transform=lrp transform.lrp.latent_mse=1")
# FT_CROP / FT_BATCH: the fine-tunes' crops (64-px crops give 4x4 latents: LRP's and the LPC
# predictor's convolutions then mostly see zero padding and do not carry over to full images)
FT_CROP=${FT_CROP:-64}; FT_BATCH=${FT_BATCH:-8}; ONLY=${ONLY:-}
FT=$OUT/ft${FT_CROP}
CKPTS=()
for v in "${VARIANTS[@]}"; do
  name=${v%%:*}; read -r -a tr <<< "${v#*:}"
  [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]] || continue
  [ -f $FT/$name/checkpoints/last.ckpt ] || \
  $PY train.py "${COMMON[@]}" quantizer=mixed "${tr[@]}" model.weights=$BASE schedule.lr=1e-4 \
      data.crop_size=$FT_CROP data.batch_size=$FT_BATCH "schedule.milestones=[100000]" \
      trainer.max_steps=${FT_STEPS:-150} hydra.run.dir=$FT/$name
  CKPTS+=("$FT/$name")
done
$PY eval.py "ckpt=[$(IFS=,; echo "${CKPTS[*]}")]" data=folder data.val_dir=../shared/data/kodak \
    data.max_val_images=4 metrics.decompose=true hydra.run.dir=$FT/eval
