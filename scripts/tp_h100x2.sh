#!/usr/bin/env bash
# Tensor parallelism on the two-H100 machine (issue 10), each step time-boxed so that the job fits ~4 minutes:
#   overlap  benchmarks/tp_overlap.py --model llama-3-8b --tp 2: greedy TP=2 == TP=1 (float32, no TF32) and one dense
#            iteration's throughput with network overlap off vs on, compiled in the same process group
#   bench    nanoflow bench throughput --model llama-3-8b --tensor-parallel-size 2 (N prompts, 512 in / 256 out):
#            the serving engine itself over two ranks
# Logs and JSON go to $RESULTS (benchmarks/results/h100x2); after every step they are packed into $OUT/tp_h100x2.tgz
# (the device returns at most 8 files), so a call that ends early still returns what finished. Unpack at the repo root.
#
#   NANOFLOW_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/tp_h100x2.sh [overlap] [bench]
#
# Environment: JOB_BUDGET (240 s), T_overlap / T_bench (a step's box, 130 / 100; never more than the job has left),
# N (64 prompts), OVERLAP_ARGS / BENCH_ARGS (appended to the step's command, e.g.
# BENCH_ARGS='--compile-options {"executor":"stream"}'), RESULTS, NANOFLOW_GIT_COMMIT (the device copy has no .git).
set -u -o pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
# NVLink multicast stays off on the shared host (KINDS.md); children inherit these.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export NANOFLOW_GIT_COMMIT=${NANOFLOW_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-$(command -v python || command -v python3)}
R=${RESULTS:-benchmarks/results/h100x2}
N=${N:-64}
JOB_BUDGET=${JOB_BUDGET:-240}
DEST=${OUT:-}
unset OUT  # the children must not write into $OUT themselves: it returns at most 8 files
STEPS=${*:-overlap bench}
NAME=tp_h100x2
STATUS=$R/run_$NAME.txt
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
mkdir -p "$R"
: >"$STATUS"
PACKED=("$STATUS")
declare -A BOX=([overlap]=130 [bench]=100)

run_step() {  # run_step NAME OUTPUT_JSON COMMAND...
  local step=$1 json=$2 box left var t0 rc
  shift 2
  var=T_$step; box=${!var:-${BOX[$step]}}
  left=$((JOB_BUDGET - (SECONDS - START) - 5))
  (( left < box )) && box=$left
  if (( box < 20 )); then note "== $step: skipped, $left s left of the job's $JOB_BUDGET s"; return; fi
  rm -f "$json" "$R/log_$step.txt"
  PACKED+=("$R/log_$step.txt" "$json")
  note "== $step ($box s box): $*"
  t0=$SECONDS
  # timeout signals the whole process group, so the spawned ranks end with the launcher
  timeout -k 15 "$box" "$@" >"$R/log_$step.txt" 2>&1
  rc=$?
  # ranks stuck in a collective outlive the launcher's TERM and kept ~130 GB of each GPU in later jobs: kill them
  if pkill -KILL -f 'multiprocessing.spawn import spawn_main'; then sleep 3; note "killed leftover rank processes"; fi
  tail -n 8 "$R/log_$step.txt" | tee -a "$STATUS"
  note "== $step: rc=$rc$( ((rc == 124 || rc == 137)) && echo ' (time box)') in $((SECONDS - t0)) s"
  pack
}

note "tp_h100x2: commit $NANOFLOW_GIT_COMMIT, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | paste -sd,)"
install
if command -v nanoflow >/dev/null; then NANOFLOW=(nanoflow)  # the console script pip installed
else NANOFLOW=("$PY" -c "import sys; from nanoflow_compiler.cli import main; sys.exit(main())"); fi
for step in $STEPS; do
  case $step in
    overlap)
      json=$R/tp_overlap_llama3-8b_h100x2.json
      # shellcheck disable=SC2086
      run_step overlap "$json" "$PY" benchmarks/tp_overlap.py --model llama-3-8b --tp 2 --device cuda \
        --output "$json" ${OVERLAP_ARGS:-} ;;
    bench)
      json=$R/tp2_throughput_llama3-8b_512_256.json
      # shellcheck disable=SC2086
      run_step bench "$json" "${NANOFLOW[@]}" bench throughput --model llama-3-8b --tensor-parallel-size 2 \
        --num-prompts "$N" --input-len 512 --output-len 256 --output-json "$json" ${BENCH_ARGS:-} ;;
    *) note "unknown step $step (steps: overlap bench)" ;;
  esac
done
note "done in $((SECONDS - START)) s"
pack
