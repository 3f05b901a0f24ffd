#!/usr/bin/env bash
# Candidate recipes for the main job (issue: "a main job worth running"), each timed on the 2 cores
# of the machine with nothing else running: python train.py <recipe> on the embedded sample data.
# Usage: bash experiments/main_job/recipes.sh [NAME ...]   -> runs/recipes/<NAME>/, time in time.txt;
# results.json and time.txt copied to experiments/main_job/recipes/<NAME>/ (committed; table.py reads them)
# (a rerun resumes an unfinished recipe from its last.ckpt; FRESH=1 starts over).
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
declare -A R
R[old_default]="model.N=128 model.M=192 schedule=compressai trainer.max_steps=100"
R[n64_cos2e3_700]="model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=700"
R[n64_cos2e3_700_mixed]="model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=700 quantizer=mixed"
R[n64_cos2e3_700_mixed_l013]="model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=700 quantizer=mixed lmbda=0.013"
R[n64_cos2e3_1000_mixed_c96b8]="model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=1000 quantizer=mixed data.crop_size=96"
R[n128_cos1e3_300_mixed]="model.N=128 model.M=192 schedule=cosine schedule.lr=1e-3 trainer.max_steps=300 quantizer=mixed"
R[n64_cos2e3_700_mixed_l0018]="model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=700 quantizer=mixed lmbda=0.0018"
R[hyper_n64_cos2e3_700_mixed]="model=bmshj_hyperprior model.N=64 model.M=96 schedule=cosine schedule.lr=2e-3 trainer.max_steps=700 quantizer=mixed"
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(old_default n64_cos2e3_700 n64_cos2e3_700_mixed n64_cos2e3_700_mixed_l013)
for n in "${names[@]}"; do
  d=runs/recipes/$n; [ "${FRESH:-0}" = 1 ] && rm -rf "$d"; mkdir -p "$d"
  s=$(date +%s.%N)
  $PY train.py ${R[$n]} eval.every_n_steps=0 trainer.enable_progress_bar=false "hydra.run.dir=$d" >> "$d/console.txt" 2>&1
  e=$(date +%s.%N)
  echo "$n wall_s=$(echo "$e - $s" | bc) overrides: ${R[$n]}" | tee "$d/time.txt"
  # what table.py reads, committed: the run's real-bitstream result and its wall time
  if [ -f "$d/results.json" ]; then
    mkdir -p "experiments/main_job/recipes/$n" && cp "$d/results.json" "$d/time.txt" "experiments/main_job/recipes/$n/"
  fi
  tail -2 "$d/console.txt"
done
