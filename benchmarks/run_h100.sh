#!/usr/bin/env bash
# The issue-7 benchmark set on one GPU, in one go: throughput for 1024/512, 512/1024 and the three trace-shaped
# workloads, the ablations, the HF / inductor peers (vLLM, SGLang, TensorRT-LLM, torch_tensorrt when installed),
# the optimal-throughput report, latency at one rate, and the plots. Steps run in order; a failing step is logged
# to $RESULTS/failures.txt and the rest still run.
#
#   bash benchmarks/run_h100.sh                       # every step
#   bash benchmarks/run_h100.sh throughput peers plots
#
# Environment: MODEL (llama-3-8b), N (256 prompts), N_ABLATION (128), MNBT (1024 tokens per iteration),
# WORKLOADS (the throughput step's, served by one engine: "1024x512 512x1024 splitwise-like lmsys-like sharegpt-like"), ABL_LENS (the
# ablations' input x output lengths, 1024x512), ABL_ONLY (ablations.py --only), PEERS (hf inductor torch_tensorrt vllm
# sglang trtllm), HF_BATCH (64),
# RESULTS (benchmarks/results/h100), EXTRA (more flags for our runs, e.g. --compile-options '{...}'),
# GPU_LABEL (plot titles, "one H100"), DEVICE (cuda) and DTYPE (bfloat16): `DEVICE=cpu DTYPE=float32 MODEL=<tiny dir> N=4` smoke-tests the script.
# CMD_TIMEOUT (seconds, 0 = none) boxes each command. When $OUT is set (the device tool), $RESULTS is copied there
# at the end. scripts/h100_run.sh runs these steps time-boxed, on a chosen GPU, packing results after each.
set -u
cd "$(dirname "$0")/.."
MODEL=${MODEL:-llama-3-8b}
N=${N:-256}
N_ABLATION=${N_ABLATION:-128}
MNBT=${MNBT:-1024}
R=${RESULTS:-benchmarks/results/h100}
EXTRA=${EXTRA:-}
STEPS=${*:-throughput ablations peers optimal latency plots}
mkdir -p "$R"
GPU="--model $MODEL --device ${DEVICE:-cuda} --dtype ${DTYPE:-bfloat16}"
OURS="$GPU --max-num-batched-tokens $MNBT $EXTRA"

run() {
  echo "=== $*" | tee -a "$R/commands.txt"
  timeout --foreground -k 10 "${CMD_TIMEOUT:-0}" "$@" || echo "exit $?: $*" | tee -a "$R/failures.txt"
}

member() { [[ " $2 " == *" $1 "* ]]; }  # member WORD LIST
has() { member "$1" "$STEPS"; }

if has throughput; then  # one engine serves every workload in turn (compiled once)
  # shellcheck disable=SC2086
  run python benchmarks/throughput_set.py $OURS --num-prompts "$N" --output-dir "$R" \
    --workloads ${WORKLOADS:-1024x512 512x1024 splitwise-like lmsys-like sharegpt-like}
fi

if has ablations; then
  A=${ABL_LENS:-1024x512}
  run python benchmarks/ablations.py $OURS --input-len "${A%x*}" --output-len "${A#*x}" --num-prompts "$N_ABLATION" \
    ${ABL_ONLY:+--only "$ABL_ONLY"} --output-json "$R/ablations_${A%x*}_${A#*x}.json"
fi

if has peers; then
  W="--input-len 1024 --output-len 512 --num-prompts $N"
  PEERS=${PEERS:-hf inductor torch_tensorrt vllm sglang trtllm}
  member inductor "$PEERS" && run python benchmarks/peers/inductor.py $GPU --max-num-batched-tokens "$MNBT" $W --output-json "$R/inductor_1024_512.json"
  member hf "$PEERS" && run python benchmarks/peers/hf_transformers.py $GPU $W --batch-size "${HF_BATCH:-64}" --output-json "$R/hf_1024_512.json"
  member torch_tensorrt "$PEERS" && run python benchmarks/peers/torch_tensorrt_runner.py $GPU --max-num-batched-tokens "$MNBT" $W --output-json "$R/torch_tensorrt_1024_512.json"
  for p in vllm sglang trtllm; do
    member "$p" "$PEERS" && run python benchmarks/peers/${p}_runner.py $GPU $W --max-num-batched-tokens "$MNBT" --output-json "$R/${p}_1024_512.json"
  done
fi

if has optimal; then
  for w in "1024 512" "512 1024"; do
    set -- $w
    run python benchmarks/optimal.py $GPU --input-len "$1" --output-len "$2" --num-prompts "$N" --max-num-batched-tokens "$MNBT" \
      --result "$R/nanoflow_$1_$2.json" --output-json "$R/optimal_$1_$2.json"
  done
fi

if has latency; then
  run python benchmarks/latency.py $OURS --dataset splitwise-like --num-prompts 200 --request-rate 8 --output-json "$R/latency_splitwise_rate8.json"
fi

if has plots; then
  run python benchmarks/plots.py bar "$R"/nanoflow_1024_512.json "$R"/inductor_1024_512.json "$R"/hf_1024_512.json \
    "$R"/torch_tensorrt_1024_512.json "$R"/vllm_1024_512.json "$R"/sglang_1024_512.json "$R"/trtllm_1024_512.json \
    -o "$R/throughput_1024_512.png" --title "Llama-3-8B (random weights), 1024/512, ${GPU_LABEL:-one H100}"
  run python benchmarks/plots.py bar "$R"/nanoflow_*.json -o "$R/throughput_workloads.png" --label-by system+dataset \
    --title "Our engine across workloads, ${GPU_LABEL:-one H100}"
  if [ -f "$R/layer_timings.json" ]; then
    run python benchmarks/plots.py gantt "$R/layer_timings.json" -o "$R/gantt_layer.png"
  elif [ -f "$R/layer_trace.json" ]; then
    run python benchmarks/plots.py gantt "$R/layer_trace.json" --chrome-trace -o "$R/gantt_layer.png"
  else
    echo "no $R/layer_timings.json or layer_trace.json: no Gantt chart (see benchmarks/README.md)" | tee -a "$R/failures.txt"
  fi
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/$(basename "$R")" && cp -r "$R"/. "$OUT/$(basename "$R")/"
fi
