#!/usr/bin/env bash
# CPU-scale GAN study (issue 11 item 9; README "Generative compression (MS-ILLM, HiFiC)"):
#   1. a small VQ-VAE labeler (codecx train-labeler, MSE + VQ terms: no VGG weights here)
#   2. ONE shared stage-1 checkpoint: mbt_mean N=64/M=96, quantizer=mixed, MSE (no LPIPS weights
#      here), 128-px crops of BSDS500 train
#   3. stage 2 from that checkpoint, paired protocol (same seed -> same data order, same steps):
#      only g_s trains (+ D in its phase), MS-ILLM's stage-2 optimiser (AdamW 1e-4, betas (0.5, 0.9),
#      wd 0, constant LR, clip 1.0), arms reg=none | patchgan | illm (narrow discriminators)
#   4. eval.py on the 24 Kodak images, 256-px center crops (real bitstreams), then
#      experiments/illm/d_accuracy.py (held-out D accuracy, figure, table)
# Usage (repository root): bash experiments/illm/study.sh [labeler|stage1|stage2|noise|evaluate|report ...]
# Every process runs alone, one thread, nice 5; CPU seconds of each step go to runs/illm/cpu_time.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
R=${R:-runs/illm}
TRAIN=../shared/data/train/bsds500/train
KODAK=../shared/data/kodak
LMBDA=${LMBDA:-0.0035}
LAB_STEPS=${LAB_STEPS:-300}
S1_STEPS=${S1_STEPS:-1500}
S2_STEPS=${S2_STEPS:-400}
SEED=${SEED:-1}
# MS-ILLM weighs the GAN against 150 * MSE([0,1]) (lambda_d 0.008; HiFiC's beta 0.15); here the
# distortion is lmbda * 255^2 * MSE = 227.6 * MSE at lmbda=0.0035, so the same MSE:GAN ratio is x1.517:
W_ILLM=${W_ILLM:-0.0121}
W_PATCH=${W_PATCH:-0.228}
ILLM_D="reg.channels=[32,32,64,64,128,128] reg.head_channels=32 reg.weight=$W_ILLM reg.labeler=$R/labeler.pt"
PATCH_D="reg.channels=[32,64,128,256] reg.weight=$W_PATCH"
mkdir -p "$R"
T() { local name=$1; shift; /usr/bin/time -f "$name cpu_s=%U+%S wall_s=%e" -a -o "$R/cpu_time.txt" nice -n 5 "$@"; }

COMMON="experiment=cpu_study quantizer=mixed lmbda=$LMBDA seed=$SEED data.max_val_images=2 trainer.enable_progress_bar=false"
S2="model.weights=$R/stage1/checkpoints/last.ckpt schedule.optimizer=adamw schedule.lr=1e-4 +schedule.betas=[0.5,0.9]
    +schedule.weight_decay=0.0 schedule.scheduler=constant schedule.clip_max_norm=1.0 trainer.max_steps=$S2_STEPS
    trainer.val_check_interval=$S2_STEPS checkpoint.every_n_steps=$S2_STEPS"

labeler() {
  T labeler $PY -m codecx.regularizers.labeler --data $TRAIN --out $R/labeler.pt --no-lpips \
    --ch 16 --ch-mult 1 2 2 4 --num-res-blocks 1 --embed-dim 32 --code-dim 8 --codebook-size 64 \
    --crop-size 64 --batch-size 8 --steps $LAB_STEPS --warmup-steps 30 --seed $SEED --log-every 50 \
    --restart-dead 10 \
    2>&1 | tee $R/labeler.log
}
stage1() {
  T stage1 $PY train.py $COMMON trainer.max_steps=$S1_STEPS "schedule.milestones=[$((S1_STEPS * 5 / 6))]" \
    trainer.val_check_interval=500 checkpoint.every_n_steps=500 hydra.run.dir=$R/stage1 > $R/stage1.log 2>&1
}
arm() {  # arm NAME REG TRAINABLE [overrides...]
  local name=$1 reg=$2 trainable=$3; shift 3
  T "stage2_$name" $PY train.py $COMMON $S2 reg=$reg "+schedule.stages=[{name:gan,steps:null,trainable:$trainable}]" \
    "$@" hydra.run.dir=$R/stage2/$name > $R/stage2_$name.log 2>&1
}
stage2() {
  arm none none "[g_s]"
  arm patchgan patchgan "[g_s,discriminator]" $PATCH_D
  arm illm illm "[g_s,discriminator]" $ILLM_D
}
noise() {  # the protocol's noise band between runs: the none arm again with seed 2 (its data order)
  arm none_seed2 none "[g_s]" seed=2
}
evaluate() {
  for d in stage1 stage2/none stage2/patchgan stage2/illm stage2/none_seed2; do
    T "eval_${d//\//_}" $PY eval.py ckpt=$R/$d/checkpoints/last.ckpt data=folder data.val_dir=$KODAK \
      data.val_crop_size=256 progress=false threads=1 hydra.run.dir=$R/eval/${d//\//_} > $R/eval_${d//\//_}.log 2>&1
  done
}
report() {
  T report $PY experiments/illm/d_accuracy.py --runs $R --kodak $KODAK --out experiments/illm
}
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(labeler stage1 stage2 noise evaluate report)
for s in "${steps[@]}"; do "$s"; done
