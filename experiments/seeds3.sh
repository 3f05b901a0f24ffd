#!/usr/bin/env bash
# The three-seed round of the lattice fine-tune and the CSE arms (issue 29 item 2): one control
# serves both studies. The CSE control (reg=none) and the lattice control (quantizer=noise) are
# the same configuration of experiment=finetune (both are its defaults), so the control is
# trained once, at three seeds, beside the Hex arm and the CSE arms (alpha=0.1, rate normalised
# per dimension in nats, and in bits per pixel), all from the zoo's checkpoints into one sweep:
#
#   experiments/seeds3.sh                   # train (two lanes), then Kodak and both tables
#   STAGE=train|kodak|table experiments/seeds3.sh
#   DRY_RUN=1 experiments/seeds3.sh         # print the commands only
#   ARMS='reg=cse alpha=0.1 reg.units=bpp' STAGE=train experiments/seeds3.sh   # chosen arms only
#   LATTICE=0 CSE_UNITS=bpp STAGE=kodak experiments/seeds3.sh   # Kodak of one CSE arm only
#
# The arms train in the order of ARMS (the control first: the band both studies need); 48
# fine-tunes of 1000 steps (~5 min each on one core with torch.compile: ~2 h on two lanes).
# Re-running resumes each run from its last.ckpt. Kodak: the lattice study's own stage
# (latent_properties/finetune.sh: control coded scalar and Hex, the Hex arm) into
# latent_properties/finetune/seeds3/, each CSE arm into cse/ablation/seeds3/<units>_seed<s>/;
# the tables (latent_properties/finetune_table.py, cse/table.py seeds3) pair every arm with the
# control of the same seed and give the control's band over the three seeds.
set -euo pipefail
PY=${PY:-.venv/bin/python}
BASE_DIR=${BASE_DIR:-runs/zoo/mbt_mean}
SWEEP=${SWEEP:-runs/finetune/seeds3}
KODAK=${KODAK:-../shared/data/kodak}
LMBDAS=${LMBDAS:-0.0018,0.0035,0.0067,0.013}
SEEDS=${SEEDS:-1,2,3}
STAGE=${STAGE:-all}
HERE=$(dirname "$0")
LATTICE_OUT=${LATTICE_OUT:-$HERE/latent_properties/finetune/seeds3}
CSE_OUT=${CSE_OUT:-$HERE/cse/ablation/seeds3}
DEFAULT_ARMS='quantizer=noise
quantizer=hex
reg=cse alpha=0.1 reg.units=nats_per_dim
reg=cse alpha=0.1 reg.units=bpp'
ARMS=${ARMS:-$DEFAULT_ARMS}   # one arm per line; quantizer=noise is the shared control
CSE_UNITS=${CSE_UNITS:-nats_per_dim,bpp}   # the CSE arms the Kodak stage codes (those trained)
LATTICE=${LATTICE:-1}   # LATTICE=0: the Kodak stage codes the CSE arms only
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

source "$HERE/protocol.sh"  # run, require_bases, two_lanes, wait_all, ckpt_template

if [[ "$STAGE" == all || "$STAGE" == train ]]; then
  require_bases "$BASE_DIR" "$LMBDAS" seeds3.sh
  lane() {
    local common=(experiment=finetune "base_dir=$BASE_DIR" "hydra.sweep.dir=$SWEEP" sweep_report.enabled=false
                  "seed=$SEEDS" "lmbda=$1") arm
    while IFS= read -r arm; do
      [[ -z "$arm" ]] && continue
      # shellcheck disable=SC2086  # an arm is a few overrides separated by spaces
      run "$PY" train.py -m "${common[@]}" $arm
    done <<< "$ARMS"
  }
  two_lanes lane "$LMBDAS"
fi

if [[ "$STAGE" == all || "$STAGE" == kodak ]]; then
  # the lattice study's Kodak stage on this sweep: control_scalar_seed<s>, control_hex_seed<s>,
  # hex_finetuned_seed<s> (seed 1 without the suffix)
  [[ "$LATTICE" == 0 ]] || run env SWEEP="$SWEEP" SEEDS="$SEEDS" OUT="$LATTICE_OUT" KODAK="$KODAK" \
    LMBDAS="$LMBDAS" STAGE=kodak "$HERE/latent_properties/finetune.sh"
  cse_arm() {  # UNITS SEED: that CSE arm's 4-lambda curve on Kodak in CSE_OUT/UNITS_seedSEED
    local ckpts
    # shellcheck disable=SC2086  # the lambdas, one word each
    ckpts=$(ckpt_template "$SWEEP/alpha=0.1,base_dir=${BASE_DIR//\//_},experiment=finetune,lmbda={L},reg.units=$1,reg=cse,seed=$2/checkpoints/last.ckpt" ${LMBDAS//,/ })
    run "$PY" eval.py "ckpt=$ckpts" data=folder "data.val_dir=$KODAK" "name=$1_seed$2" \
      progress=false threads=1 "hydra.run.dir=$CSE_OUT/$1_seed$2"
  }
  for units in ${CSE_UNITS//,/ }; do
    pids=()
    for seed in ${SEEDS//,/ }; do
      cse_arm "$units" "$seed" & pids+=($!)
      if [[ ${#pids[@]} -eq 2 ]]; then wait_all "${pids[@]}"; pids=(); fi  # two at a time
    done
    [[ ${#pids[@]} -eq 0 ]] || wait_all "${pids[@]}"
  done
fi

if [[ "$STAGE" == all || "$STAGE" == table ]]; then
  echo "+ $PY $HERE/latent_properties/finetune_table.py $LATTICE_OUT > $LATTICE_OUT/table.md"
  [[ -n "${DRY_RUN:-}" ]] || "$PY" "$HERE/latent_properties/finetune_table.py" "$LATTICE_OUT" > "$LATTICE_OUT/table.md"
  run "$PY" "$HERE/cse/table.py" seeds3
fi
