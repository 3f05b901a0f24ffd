#!/usr/bin/env bash
# The CSE study's report: every run of experiments/cse/runs evaluated on the 24 Kodak images
# (full 768x512, real bitstreams), BD-rate of reg=cse against reg=none, each seed paired with the
# baseline's same seed, and the seed-to-seed noise band of the baseline.
# Writes experiments/cse/results/{report.md,report.csv,rd.png}; per-run results in experiments/cse/kodak/.
set -euo pipefail
CODECX=${CODECX:-.venv/bin/codecx}
"$CODECX" report experiments/cse/runs --baseline reg=none --replicates seed \
  --data-val-dir ../shared/data/kodak --eval-dir experiments/cse/kodak -o experiments/cse/results --no-progress "$@"
