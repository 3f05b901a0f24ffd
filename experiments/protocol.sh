# Shell helpers of the study scripts (zoo/build.sh, cse/ablation.sh, compensation/study.sh,
# shallow_sga/study.sh); source it. DRY_RUN=1 prints the commands only.

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
      "experiments/zoo/build.sh (docs/studies/index.md)" >&2; exit 1; }
  done
}

two_lanes() {  # FUNCTION LMBDAS: FUNCTION on each half of the lambdas, side by side (2 cores)
  local -a ls pids=()
  IFS=, read -ra ls <<< "$2"
  local half=$(( (${#ls[@]} + 1) / 2 ))
  "$1" "$(IFS=,; echo "${ls[*]:0:$half}")" & pids+=($!)
  if [[ $half -lt ${#ls[@]} ]]; then "$1" "$(IFS=,; echo "${ls[*]:$half}")" & pids+=($!); fi
  wait_all "${pids[@]}"
}

wait_all() {  # PID...: wait for every job; fail (after all have ended) when any of them failed
  local pid rc=0
  for pid in "$@"; do wait "$pid" || rc=$?; done
  return "$rc"
}

ckpt_template() {  # TEMPLATE LMBDA...: eval.py's ckpt=[...] list, TEMPLATE's {L} replaced by each lambda
  local template=$1 s="" l
  shift
  for l in "$@"; do s+="${s:+,}'${template//"{L}"/$l}'"; done
  echo "[$s]"
}

ckpt_list() {  # DIR FILE LMBDA...: eval.py's ckpt=[...] list of DIR/lmbda=L/checkpoints/FILE
  local dir=$1 file=$2
  shift 2
  ckpt_template "$dir/lmbda={L}/checkpoints/$file" "$@"
}
