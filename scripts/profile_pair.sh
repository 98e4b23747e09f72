#!/usr/bin/env bash
# Issue 11 diagnosis on a two-GPU machine: the same workload profiled and timed under the nanoflow backend (GPU 0)
# and stock inductor (GPU 1) at once. Call as `NANOFLOW_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/profile_pair.sh`.
# Environment: N (throughput prompts, 256), NP (profiled workload prompts, 400), SKIP (unprofiled steps, 200).
set -u
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
export PYTHONUNBUFFERED=1
R=benchmarks/results/h100/profile
mkdir -p "$R"
COMMON="--model llama-3-8b --device cuda --dtype bfloat16 --max-num-batched-tokens 1024"
one() {  # gpu name profile-flag throughput-script
  local gpu=$1 name=$2 flag=$3 script=$4
  CUDA_VISIBLE_DEVICES=$gpu timeout ${PROFILE_S:-230} python benchmarks/profile_step.py $COMMON $flag --input-len 1024 \
    --output-len 512 --num-prompts ${NP:-400} --skip-steps ${SKIP:-200} --steps 4 --output-json "$R/profile_$name.json" \
    > "$R/profile_$name.log" 2>&1
  CUDA_VISIBLE_DEVICES=$gpu timeout ${THROUGHPUT_S:-300} python $script $COMMON ${EXTRA:-} \
    --input-len 1024 --output-len 512 --num-prompts ${N:-256} --output-json "$R/${name}_1024_512.json" \
    > "$R/throughput_$name.log" 2>&1
}
nvidia-smi -L > "$R/devices.txt"
one 0 nanoflow "" benchmarks/throughput.py &
one 1 inductor "--backend inductor" benchmarks/peers/inductor.py &
wait
tail -n 15 "$R"/*.log
[ -n "${OUT:-}" ] && tar czf "$OUT/profile.tgz" -C benchmarks/results/h100 profile
