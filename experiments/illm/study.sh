#!/usr/bin/env bash
# CPU-scale GAN study, third round (issue 28 item 4; docs "Generative compression (MS-ILLM, HiFiC)"):
#   1. labeler: a small VQ-VAE labeler trained until its codes are used and informative (MSE + VQ
#      terms: no VGG weights here); labeler_old: the first round's 300-step labeler (the diagnosis)
#   2. ONE shared stage-1 checkpoint: mbt_mean N=64/M=96, quantizer=mixed, MSE, 128-px BSDS500 crops
#   3. diag: D-only runs (generator term off for all their steps) that measure whether the ILLM D
#      separates held-out real crops from reconstructions: conditioned / no y_hat, old / new labeler
#      (the labeler step's Kodak statistics: labeler_stats)
#   4. stage 2 from the stage-1 checkpoint, paired protocol (same steps; the seed sets the data
#      order): only g_s trains (+ D in its phase), MS-ILLM's stage-2 optimiser (AdamW 1e-4, betas
#      (0.5, 0.9), wd 0, constant LR, clip 1.0; D clipped at 1.0 too), 64-px crops, batch 16; arms
#      none | patchgan | illm with seeds 1 and 2, illm_noy (D without y_hat) with seed 1, illm_bin (the
#      ILLM U-Net D with one label class: binary real/fake) with seeds 1 and 2, illm_binw (illm_bin at
#      the PatchGAN's weight) with seed 1; every GAN arm: D warm-up of $WARM steps. Third round:
#      `ARMS="illm:1 illm:2 illm_bin:1 illm_bin:2 illm_binw:1" stage2` with the ILLM D below (none and
#      patchgan unchanged from the second round)
#   5. eval.py on the 24 Kodak images, 256-px center crops (real bitstreams), then
#      experiments/illm/d_accuracy.py report (held-out D accuracy, tables, per-image CSVs, figure)
# Usage (repository root): bash experiments/illm/study.sh [labeler|labeler_old|stage1|diag|diag_binary|diag_paired|diag_old|stage2|evaluate|report ...]
# Every process runs alone, one thread, nice 5; CPU seconds of each step go to $R/cpu_time.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
R=${R:-runs/illm2}
TRAIN=../shared/data/train/bsds500/train
KODAK=../shared/data/kodak
LMBDA=${LMBDA:-0.0035}
LAB_STEPS=${LAB_STEPS:-2000}
S1_STEPS=${S1_STEPS:-1500}
S2_STEPS=${S2_STEPS:-500}
S2_CROP=${S2_CROP:-64}     # stage 2 (and diag): 64-px crops, batch 16 (the released 16 per step)
S2_BATCH=${S2_BATCH:-16}
WARM=${WARM:-250}         # D-only steps at the start of every GAN arm (generator term off): see diag
DIAG_STEPS=${DIAG_STEPS:-80}
# MS-ILLM weighs the GAN against 150 * MSE([0,1]) (lambda_d 0.008; HiFiC's beta 0.15); here the
# distortion is lmbda * 255^2 * MSE = 227.6 * MSE at lmbda=0.0035, so the same MSE:GAN ratio is x1.517:
W_ILLM=${W_ILLM:-0.0121}
W_PATCH=${W_PATCH:-0.228}
# PatchGAN D lr x2.5 (HiFiC 1e-4): 500 steps stand for 100k. The ILLM D keeps MS-ILLM's 4e-4: at
# 1e-3 (the second round's x2.5) the U-Net does not learn the real/fake cue (experiments/illm/README.md)
LR_ILLM=${LR_ILLM:-4e-4}
LR_PATCH=${LR_PATCH:-2.5e-4}
# ILLM D (third round): 4 levels on the 64-px crops, so the bottleneck is 4x4 as the released 6 levels
# make it on 256-px crops (6 levels on 64 px go down to 1x1: that D stays blind, README), and each image
# beside its own reconstruction (reg.mc_sampling=false, the PatchGAN arm's pairing); the second round's D:
# ILLM_D="reg.channels=[32,32,64,64,128,128] reg.head_channels=32 reg.weight=0.0121 reg.lr=1e-3"
ILLM_CH=${ILLM_CH:-[32,64,128,128]}
ILLM_DW="reg.channels=$ILLM_CH reg.head_channels=32 reg.lr=$LR_ILLM reg.mc_sampling=${ILLM_MC:-false}"
ILLM_D="$ILLM_DW reg.weight=$W_ILLM"
PATCH_D="reg.channels=[32,64,128,256] reg.weight=$W_PATCH reg.lr=$LR_PATCH"
mkdir -p "$R"
T() { local name=$1; shift; /usr/bin/time -f "$name cpu_s=%U+%S wall_s=%e" -a -o "$R/cpu_time.txt" nice -n 5 "$@"; }

COMMON="experiment=cpu_study quantizer=mixed lmbda=$LMBDA data.max_val_images=2 trainer.enable_progress_bar=false trainer.compile=false"  # compile off: as every earlier arm ran
S2="model.weights=$R/stage1/checkpoints/last.ckpt schedule.optimizer=adamw schedule.lr=1e-4 +schedule.betas=[0.5,0.9]
    +schedule.weight_decay=0.0 schedule.scheduler=constant schedule.clip_max_norm=1.0
    data.crop_size=$S2_CROP data.batch_size=$S2_BATCH"

lab() {  # lab OUT STEPS LR [extra]: the CPU labeler (64 codes, 0.84 M parameters), 64-px crops
  local out=$1 steps=$2 lr=$3; shift 3
  T "labeler_$(basename "$out" .pt)" $PY -m codecx.regularizers.labeler --data $TRAIN --out "$out" --no-lpips \
    --ch 16 --ch-mult 1 2 2 4 --num-res-blocks 1 --embed-dim 32 --code-dim 8 --codebook-size 64 \
    --crop-size 64 --batch-size 8 --steps "$steps" --lr "$lr" --seed 1 --log-every 100 "$@" \
    2>&1 | tee "${out%.pt}.log"
  $PY experiments/illm/d_accuracy.py labeler "$out" --kodak $KODAK | tee "${out%.pt}_kodak.json"
}
labeler() { lab $R/labeler.pt $LAB_STEPS 5e-4 --warmup-steps 100 --restart-dead 20; }
labeler_old() { lab $R/labeler_old.pt 300 3e-4 --warmup-steps 30 --schedule cosine --restart-dead 10; }  # the first round's
stage1() {
  T stage1 $PY train.py $COMMON seed=1 trainer.max_steps=$S1_STEPS "schedule.milestones=[$((S1_STEPS * 5 / 6))]" \
    trainer.val_check_interval=500 checkpoint.every_n_steps=500 hydra.run.dir=$R/stage1 > $R/stage1.log 2>&1
}
run2() {  # run2 DIR STEPS SEED REG TRAINABLE [overrides...]: one stage-2 run from the stage-1 checkpoint
  local dir=$1 steps=$2 seed=$3 reg=$4 trainable=$5; shift 5
  T "${dir//\//_}" $PY train.py $COMMON $S2 seed=$seed reg=$reg trainer.max_steps=$steps \
    trainer.val_check_interval=$steps checkpoint.every_n_steps=$steps \
    "+schedule.stages=[{name:gan,steps:null,trainable:$trainable}]" "$@" hydra.run.dir=$R/$dir > $R/${dir//\//_}.log 2>&1
}
diag() {  # D alone (warm-up over all steps: the generator term never switches on), then held-out accuracy
  local n=$DIAG_STEPS
  run2 diag/cond $n 1 illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler.pt reg.warmup_steps=$n
  run2 diag/noy $n 1 illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler.pt reg.warmup_steps=$n reg.condition=false
  T diag_report $PY experiments/illm/d_accuracy.py diag $R/diag/cond $R/diag/noy --kodak $KODAK --json $R/diag/d_accuracy.jsonl
}
diag_binary() {  # the same U-Net D with one label class (codebook of 1 code: OASIS = binary real/fake CE)
  local n=$DIAG_STEPS
  $PY -m codecx.regularizers.labeler --data $TRAIN --out $R/labeler_c1.pt --no-lpips --ch 16 --ch-mult 1 2 2 4 \
    --num-res-blocks 1 --embed-dim 32 --code-dim 8 --codebook-size 1 --crop-size 64 --steps 1 > $R/labeler_c1.log 2>&1
  local d=diag/binary$([ "$n" = 80 ] || echo "_$n")
  run2 $d $n 1 illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler_c1.pt reg.warmup_steps=$n
  T diag_report_binary $PY experiments/illm/d_accuracy.py diag $R/$d --kodak $KODAK --json $R/diag/d_accuracy.jsonl
}
diag_paired() {  # the one-class U-Net D shown each image and its own reconstruction (reg.mc_sampling=false)
  local n=$DIAG_STEPS
  [ -f $R/labeler_c1.pt ] || diag_binary
  run2 diag/binary_paired_$n $n 1 illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler_c1.pt reg.warmup_steps=$n \
    reg.mc_sampling=false
  T diag_report_paired $PY experiments/illm/d_accuracy.py diag $R/diag/binary_paired_$n --kodak $KODAK --json $R/diag/d_accuracy.jsonl
}
diag_old() {  # the same with the first round's labeler (run labeler_old first)
  local n=$DIAG_STEPS
  run2 diag/cond_old $n 1 illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler_old.pt reg.warmup_steps=$n
  T diag_report_old $PY experiments/illm/d_accuracy.py diag $R/diag/cond_old --kodak $KODAK --json $R/diag/d_accuracy.jsonl
}
arm() {  # arm GROUP SEED [overrides...]
  local g=$1 s=$2; shift 2
  case $g in
    none) run2 stage2/none_s$s $S2_STEPS $s none "[g_s]" "$@" ;;
    patchgan) run2 stage2/patchgan_s$s $S2_STEPS $s patchgan "[g_s,discriminator]" $PATCH_D reg.warmup_steps=$WARM "$@" ;;
    illm) run2 stage2/illm_s$s $S2_STEPS $s illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler.pt \
      reg.warmup_steps=$WARM "$@" ;;
    illm_bin) run2 stage2/illm_bin_s$s $S2_STEPS $s illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler_c1.pt \
      reg.warmup_steps=$WARM "$@" ;;  # the same U-Net D with one label class: binary real/fake (no labeler codes)
    illm_binw) run2 stage2/illm_binw_s$s $S2_STEPS $s illm "[g_s,discriminator]" $ILLM_DW reg.weight=$W_PATCH \
      reg.labeler=$R/labeler_c1.pt reg.warmup_steps=$WARM "$@" ;;  # illm_bin at the PatchGAN arm's weight 0.228
    illm_noy) run2 stage2/illm_noy_s$s $S2_STEPS $s illm "[g_s,discriminator]" $ILLM_D reg.labeler=$R/labeler.pt \
      reg.warmup_steps=$WARM reg.condition=false "$@" ;;
  esac
}
# the three-seed round (issue 29 item 2): a third seed of the control and of the arms that claim an
# effect, a second and third of illm_binw: `ARMS="$SEEDS3" stage2`, then `EVAL=... evaluate` (README)
SEEDS3="none:3 patchgan:3 illm_bin:3 illm_binw:2 illm_binw:3"
stage2() {  # ARMS="none:1 none:2" runs a subset (GROUP:SEED)
  local a
  for a in ${ARMS:-illm:1 patchgan:1 illm:2 patchgan:2 illm_noy:1 none:1 none:2 illm_bin:1 illm_bin:2 illm_binw:1 $SEEDS3}; do
    arm ${a%:*} ${a#*:}
  done
}
evaluate() {  # EVAL="stage2/illm_s1 ..." evaluates a subset
  local all=(stage1 stage2/{none,patchgan,illm}_s{1,2} stage2/illm_noy_s1 stage2/illm_bin_s{1,2} stage2/illm_binw_s1
             stage2/{none,patchgan,illm_bin,illm_binw}_s3 stage2/illm_binw_s2)  # the three-seed round
  for d in ${EVAL:-${all[@]}}; do
    local name=${d#stage2/}
    T "eval_$name" $PY eval.py ckpt=$R/$d/checkpoints/last.ckpt data=folder data.val_dir=$KODAK \
      data.val_crop_size=256 progress=false threads=1 hydra.run.dir=$R/eval/$name > $R/eval_$name.log 2>&1
  done
}
report() {
  T report $PY experiments/illm/d_accuracy.py report --runs $R --kodak $KODAK --out experiments/illm
}
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(labeler stage1 diag stage2 evaluate report diag_binary labeler_old diag_old)
for s in "${steps[@]}"; do "$s"; done
