# Shell helpers of the paired-protocol study scripts (cse/ablation.sh, compensation/study.sh);
# source it. DRY_RUN=1 prints the commands only.

run() {  # print a command, then run it unless DRY_RUN
  echo "+ $*"
  if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi
}

require_bases() {  # BASE_DIR LMBDAS(comma-separated) WHO: stop unless every base checkpoint exists
  [[ -n "${DRY_RUN:-}" ]] && return 0
  local l ckpt
  for l in ${2//,/ }; do
    ckpt="$1/lmbda=$l/checkpoints/last.ckpt"
    [[ -f "$ckpt" ]] || { echo "$3: no base checkpoint $ckpt; train the base zoo first:" \
      "experiments/zoo/build.sh (README, Studies)" >&2; exit 1; }
  done
}

two_lanes() {  # FUNCTION LMBDAS: FUNCTION on each half of the lambdas, side by side (2 cores)
  local -a ls
  IFS=, read -ra ls <<< "$2"
  local half=$(( (${#ls[@]} + 1) / 2 ))
  "$1" "$(IFS=,; echo "${ls[*]:0:$half}")" &
  if [[ $half -lt ${#ls[@]} ]]; then "$1" "$(IFS=,; echo "${ls[*]:$half}")" & fi
  wait
}
