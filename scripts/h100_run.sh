#!/usr/bin/env bash
# GPU steps for the device, on one chosen GPU, each time-boxed; logs and JSON go to benchmarks/results/h100/ and the
# files this job wrote are re-packed into $OUT/<NAME>.tgz after every step, so a call that ends early still returns
# what finished. Two jobs can share a two-GPU machine:
#
#   GPU=0 bash scripts/h100_run.sh bench & GPU=1 bash scripts/h100_run.sh search gantt gpu-tests & wait
#
# Steps, run in the order given:
#   gpu-tests   pytest -m gpu (TESTS overrides the targets)
#   kernels     benchmarks/kernel_bench.py (SWEEP=1 adds the tile sweep)
#   layer       benchmarks/layer_overlap.py $LAYER_ARGS (hand-written two-stream layer)
#   interference  benchmarks/interference.py $INTERFERENCE_ARGS: the layer's streams beside each other and stand-ins
#   e2e         benchmarks/e2e_overlap.py $E2E_ARGS: engine greedy tokens and throughput, overlap on vs off (issue 5)
#   gantt       benchmarks/layer_gantt.py: measured per-op timings of Llama-3-8B layers -> layer_timings.json + PNG
#   search      benchmarks/search_vs_grid.py at 1024 and 2048 tokens (issue 6), told the time its box leaves
#   bench       the issue-7 set through benchmarks/run_h100.sh: throughput ablations peers optimal plots
#   throughput ablations peers optimal latency plots   one part of that set
#
# Environment: GPU (0; sets CUDA_VISIBLE_DEVICES), NAME (tarball name, h100_gpu$GPU), JOB_BUDGET (seconds for the
# whole job, 570: a device call lasts at most 600 s), T_<step> (a step's box, e.g. T_search=400; a step gets at most
# what the job has left), N / N_ABLATION (prompts, 16 / 8), CMD_TIMEOUT_<step> (box of each command inside a bench
# part), RESULTS (benchmarks/results/h100), NANOFLOW_GIT_COMMIT (the device copy has no .git: pass
# `NANOFLOW_GIT_COMMIT=$(git rev-parse HEAD)`). Unpack the tarballs at the repository root.
set -u -o pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
GPU=${GPU:-0}
export CUDA_VISIBLE_DEVICES=$GPU PYTHONUNBUFFERED=1
export NANOFLOW_GIT_COMMIT=${NANOFLOW_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
R=${RESULTS:-benchmarks/results/h100}
export RESULTS=$R N=${N:-16} N_ABLATION=${N_ABLATION:-8}
NAME=${NAME:-h100_gpu$GPU}
JOB_BUDGET=${JOB_BUDGET:-570}
DEST=${OUT:-}
unset OUT  # children would copy their own files into $OUT, which returns only 8 files: this script packs instead
STEPS=${*:?usage: [GPU=0] bash scripts/h100_run.sh STEP... (see the header)}
STATUS=$R/run_$NAME.txt
PY=${PYTHON:-python}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
mkdir -p "$R"
: >"$STATUS"
PACKED=("$STATUS")

declare -A BOX=([gpu-tests]=240 [kernels]=150 [layer]=240 [interference]=120 [e2e]=300 [gantt]=150 [search]=420
                [throughput]=270 [ablations]=130 [peers]=100 [optimal]=30 [latency]=120 [plots]=15)
declare -A CMD_BOX=([throughput]=270 [ablations]=130 [peers]=60 [optimal]=15 [latency]=120 [plots]=10)
declare -A FILES=(
  [gpu-tests]="log_gpu-tests.txt"
  [kernels]="log_kernels.txt kernels.json"
  [layer]="log_layer.txt layer_overlap.json"
  [interference]="log_interference.txt interference.json"
  [e2e]="log_e2e.txt e2e_overlap.json"
  [gantt]="log_gantt.txt layer_timings.json gantt_layer.png"
  [search]="log_search.txt search_vs_grid.json"
  [throughput]="log_throughput.txt nanoflow_*.json"
  [ablations]="log_ablations.txt ablations_*.json"
  [peers]="log_peers.txt inductor_*.json hf_*.json torch_tensorrt_*.json vllm_*.json sglang_*.json trtllm_*.json"
  [optimal]="log_optimal.txt optimal_*.json"
  [latency]="log_latency.txt latency_*.json"
  [plots]="log_plots.txt throughput_*.png"
)

claim() {  # claim STEP: drop the step's earlier outputs (they are in git) and pack what it writes from now on
  local pattern
  for pattern in ${FILES[$1]}; do
    rm -f "$R"/$pattern
    PACKED+=("$R/$pattern")
  done
}

command_for() {  # the command line of a step
  case $1 in
    gpu-tests) echo "python -m pytest ${TESTS:--m gpu tests} -q -p no:cacheprovider" ;;
    kernels) echo "python benchmarks/kernel_bench.py ${SWEEP:+--sweep} --name kernels_$NAME" ;;
    layer) echo "python benchmarks/layer_overlap.py ${LAYER_ARGS:-} --name layer_overlap_$NAME" ;;
    interference) echo "python benchmarks/interference.py ${INTERFERENCE_ARGS:-} --name interference_$NAME" ;;
    e2e) echo "python benchmarks/e2e_overlap.py ${E2E_ARGS:-} --name e2e_overlap_$NAME" ;;
    gantt) echo "python benchmarks/layer_gantt.py ${GANTT_ARGS:-} --output-dir $R" ;;
    search) echo "python benchmarks/search_vs_grid.py --buckets 1024 2048 ${SEARCH_ARGS:-} --output $R/search_vs_grid.json --time-budget" ;;
    throughput|ablations|peers|optimal|latency|plots) echo "bash benchmarks/run_h100.sh $1" ;;
  esac
}

run_step() {
  local step=$1 box left cmd t0 rc var
  box=${BOX[$step]}
  var=T_${step//-/_}; box=${!var:-$box}
  left=$((JOB_BUDGET - (SECONDS - START) - 5))
  if (( left < 15 )); then note "== $step: skipped, $left s left of the job's $JOB_BUDGET s"; return; fi
  (( left < box )) && box=$left
  claim "$step"
  cmd=$(command_for "$step")
  [ "$step" = search ] && cmd="$cmd $((box - 20))"  # it stops itself and writes its JSON; the box is the backstop
  var=CMD_TIMEOUT_${step//-/_}
  export CMD_TIMEOUT=${!var:-${CMD_BOX[$step]:-0}}  # run_h100.sh boxes each of its commands with it
  note "== $step ($box s box): $cmd"
  t0=$SECONDS
  timeout -k 20 "$box" $cmd >"$R/log_$step.txt" 2>&1
  rc=$?
  case $step in  # gpu_timing.write_json writes to benchmarks/results/; keep this job's copy with the rest
    kernels) [ -f "benchmarks/results/kernels_$NAME.json" ] && mv "benchmarks/results/kernels_$NAME.json" "$R/kernels.json" ;;
    layer) [ -f "benchmarks/results/layer_overlap_$NAME.json" ] && mv "benchmarks/results/layer_overlap_$NAME.json" "$R/layer_overlap.json" ;;
    interference) [ -f "benchmarks/results/interference_$NAME.json" ] &&
        mv "benchmarks/results/interference_$NAME.json" "$R/interference.json" ;;
    e2e) [ -f "benchmarks/results/e2e_overlap_$NAME.json" ] && mv "benchmarks/results/e2e_overlap_$NAME.json" "$R/e2e_overlap.json" ;;
  esac
  tail -n 5 "$R/log_$step.txt"
  note "== $step: rc=$rc$( ((rc == 124 || rc == 137)) && echo ' (time box)') in $((SECONDS - t0)) s"
  pack
}

EXPANDED=${STEPS//bench/throughput ablations peers optimal plots}
for step in $EXPANDED; do
  [ -n "${FILES[$step]:-}" ] || { echo "unknown step '$step'; steps: gpu-tests kernels layer interference e2e gantt search bench ${!CMD_BOX[*]}" >&2; exit 2; }
done
note "job $NAME on GPU $GPU: $STEPS (commit $NANOFLOW_GIT_COMMIT, budget $JOB_BUDGET s)"
nvidia-smi --query-gpu=index,name,memory.used,memory.total,clocks.sm --format=csv,noheader -i "$GPU" 2>&1 | tee -a "$STATUS"
install
if [[ " $EXPANDED " =~ \ (throughput|ablations|peers|optimal|latency|plots)\  ]]; then
  rm -f "$R/commands.txt" "$R/failures.txt"  # run_h100.sh appends to them
  PACKED+=("$R/commands.txt" "$R/failures.txt")
fi
for step in $EXPANDED; do run_step "$step"; done
note "job $NAME done in $((SECONDS - START)) s"
pack
