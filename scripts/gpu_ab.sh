#!/usr/bin/env bash
# gpu_ab.sh - on a CUDA machine, in one call: build the CUDA KDA op of this tree and of a baseline tree
# (sm_90a), run compute-sanitizer (memcheck + racecheck) on the 64-token path's small case and the
# check grid of the 16-bit modes on this tree, then time both with scripts/kda64_overlap.py (same
# process per lib, same inputs). Logs and JSON go to $OUT.
# Usage: OUT=/tmp/out BASE=/path/to/baseline/tree scripts/gpu_ab.sh [--no-check] [--runs "f16,OVL=0;..."] [--T "8192 32768"]
#        [--anchor] [--bench]
#   BASE unset: only this tree. --base-runs: the runs for the baseline (default: the same as --runs).
#   --anchor: build llama.cpp's ggml with CUDA in the background (needs .cache/ggml-src, as gpu_check.sh)
#   and time its GATED_DELTA_NET at the end; --bench: gpu_bench.py --bench --no-fla (every math mode of
#   ours at T = 1024, 8192, 32768).
set -u -o pipefail
OUT=${OUT:-/tmp/kda_ab}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
CHECK=1; RUNS="f16,OVL=0;f16,OVL=4;bf16,OVL=0;bf16,OVL=4"; BRUNS=""; TS="8192 32768"; ANCHOR=0; BENCH=0
while [ $# -gt 0 ]; do case $1 in
  --no-check) CHECK=0;; --anchor) ANCHOR=1;; --bench) BENCH=1;; --runs) RUNS=$2; shift;; --base-runs) BRUNS=$2; shift;; --T) TS=$2; shift;;
esac; shift; done
status=0
build() {  # tree dir -> lib path on stdout
  cmake -S "$1/ggml_ops/cuda" -B "$2" -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a > "$2.log" 2>&1 \
    && cmake --build "$2" -j 16 >> "$2.log" 2>&1 || { echo "BUILD FAILED: $1" >&2; tail -30 "$2.log" >&2; return 1; }
}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; date -u +%FT%TZ
if [ $ANCHOR = 1 ]; then
  bash scripts/ggml_anchor_build.sh > "$OUT/ggml_build.log" 2>&1 &
  GGML_PID=$!
fi
build "$ROOT" /tmp/ab-new || exit 1
[ -n "${BASE:-}" ] && { build "$BASE" /tmp/ab-base || exit 1; }
if [ $CHECK = 1 ]; then
  /tmp/ab-new/kda_sanitize_case c64 | tail -2 || status=1
  compute-sanitizer --tool memcheck --error-exitcode 9 /tmp/ab-new/kda_sanitize_case c64 > "$OUT/memcheck.log" 2>&1; rc=$?
  echo "memcheck rc=$rc: $(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/memcheck.log") clean summary"; [ $rc = 0 ] || status=1
  compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 9 /tmp/ab-new/kda_sanitize_case c64 > "$OUT/racecheck.log" 2>&1; rc=$?
  echo "racecheck rc=$rc: $(tail -1 "$OUT/racecheck.log")"; [ $rc = 0 ] || status=1
  KIMI_CHECK_S=128 timeout 240 python3 scripts/gpu_bench.py --lib /tmp/ab-new/libkimi_kda_gpu.so --check --modes f16,bf16 \
    --json "$OUT/check.json" > "$OUT/check.log" 2>&1 || status=1
  tail -4 "$OUT/check.log"
fi
# shellcheck disable=SC2086
python3 scripts/kda64_overlap.py --lib /tmp/ab-new/libkimi_kda_gpu.so --T $TS --runs "$RUNS" --json "$OUT/ab_new.json" | sed 's/^/new  /'
if [ -n "${BASE:-}" ]; then
  # shellcheck disable=SC2086
  python3 scripts/kda64_overlap.py --lib /tmp/ab-base/libkimi_kda_gpu.so --T $TS --runs "${BRUNS:-$RUNS}" --json "$OUT/ab_base.json" | sed 's/^/base /'
fi
if [ $BENCH = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 200 python3 scripts/gpu_bench.py --lib /tmp/ab-new/libkimi_kda_gpu.so --bench --no-fla \
    --T 1024,8192,32768 --json "$OUT/bench.json" 2>&1 | tail -12
fi
if [ $ANCHOR = 1 ]; then
  while kill -0 $GGML_PID 2>/dev/null && [ $SECONDS -lt ${GGML_WAIT_UNTIL:-500} ]; do sleep 5; done
  kill -0 $GGML_PID 2>/dev/null && { echo "ggml build still running at ${SECONDS}s: skipped"; kill $GGML_PID; }
  tail -1 "$OUT/ggml_build.log"
  [ -x /tmp/ggml_gdn_bench ] && timeout 120 /tmp/ggml_gdn_bench | tee "$OUT/ggml_bench.txt"
fi
exit $status
