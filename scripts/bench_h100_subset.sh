#!/usr/bin/env bash
# A reduced issue-7 set that fits one 10-minute device call: each step is time-boxed and the results are
# re-packed into $OUT/h100.tgz after every step, so a step that runs long still leaves the earlier results.
set -u
# The device copy has no .git: call as `NANOFLOW_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/bench_h100_subset.sh`.
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1 RESULTS=benchmarks/results/h100 N=${N:-64} N_ABLATION=${N_ABLATION:-32}
mkdir -p "$RESULTS"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/h100.tgz" -C benchmarks/results h100; }
for spec in throughput:220 optimal:30 peers:130 ablations:100 plots:15; do
  step=${spec%:*}
  timeout "${spec#*:}" bash benchmarks/run_h100.sh "$step" 2>&1 | tee -a "$RESULTS/log_$step.txt" | tail -20
  pack
done
