#!/usr/bin/env bash
# Every GPU test and GPU benchmark in one call on the device (see .library/device): logs and JSON go to $OUT,
# results to benchmarks/results/. Knobs (environment): TESTS (pytest targets, default: all tests marked gpu),
# SWEEP=1 (time every kernel tile config), LAYER_ARGS (benchmarks/layer_overlap.py arguments),
# SKIP (space-separated steps to skip: tests kernels layer), STEP_TIMEOUT (seconds per step, default 240).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OUT
export NANOFLOW_COMMIT=${NANOFLOW_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
SKIP=${SKIP:-}
status=0

step() {  # step NAME COMMAND...: run with a timeout, log to $OUT/NAME.log, remember failures
  local name=$1; shift
  if [[ " $SKIP " == *" $name "* ]]; then echo "== $name: skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  [[ $rc == 0 ]] || status=1
}

if ! python -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
  # offline and no usable setuptools: mirror the package-dir mapping of pyproject.toml with symlinks
  echo "pip install -e failed (see install.log); importing through a symlinked tree"
  pkg=/tmp/nanoflow_pkg/nanoflow_compiler; rm -rf /tmp/nanoflow_pkg; mkdir -p "$pkg"
  for f in nanoflow_compiler/*; do ln -s "$PWD/$f" "$pkg/"; done
  for d in passes runtime models; do ln -s "$PWD/$d" "$pkg/$d"; done
  export PYTHONPATH=/tmp/nanoflow_pkg${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

step tests python -m pytest ${TESTS:--m gpu tests} -q -p no:cacheprovider
step kernels python benchmarks/kernels.py ${SWEEP:+--sweep}
step layer python benchmarks/layer_overlap.py ${LAYER_ARGS:-}
exit $status
