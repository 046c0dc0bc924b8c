#!/usr/bin/env bash
# gpu_check.sh - on a CUDA machine, in one go: build the CUDA KDA op, run compute-sanitizer
# (memcheck + racecheck) on a small case, check it against python_ref float64 and the CPU op, build
# llama.cpp's ggml with CUDA from the pinned sdist's vendored source and time its GATED_DELTA_NET,
# and time ours vs llama.cpp vs FLA (chunk_kda, fused_recurrent_kda). Logs and JSON go to $OUT.
#
# Needs (carried by the caller, ignored by git):
#   .cache/ggml-src/ggml   vendor/llama.cpp/ggml of llama-cpp-python 0.3.36 (+ an empty ggml.pc.in);
#                          the flash-attention template instances may be left out (unused here)
#   .whl/                  fla_core-0.6.0 (+ einops) wheels
# Usage: OUT=/tmp/out [NO_FLA=1] scripts/gpu_check.sh [--no-ggml] [--no-bench] [--decode]
#   --decode: after the ggml build, llama.cpp's T = 1 timing and then gpu_bench.py --decode (every
#   one-token variant checked and timed, ratio vs llama.cpp's op_ev_us of the same run)
set -u -o pipefail
OUT=${OUT:-/tmp/kda_out}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
DO_GGML=1; DO_BENCH=1; DO_DECODE=0
for a in "$@"; do case $a in --no-ggml) DO_GGML=0;; --no-bench) DO_BENCH=0;; --decode) DO_DECODE=1;; esac; done
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step device
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv
nvcc --version | tail -1

if [ $DO_GGML = 1 ] && [ -d .cache/ggml-src/ggml ]; then
  step "ggml (CUDA, sm_90, CUDA graphs on as in llama.cpp's build) build in the background"
  JOBS=14 bash scripts/ggml_anchor_build.sh > "$OUT/ggml_build.log" 2>&1 &
  GGML_PID=$!
fi

step "wheels (FLA)"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build ours (sm_90a)"
cmake -S ggml_ops/cuda -B /tmp/kda-build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/build.log" 2>&1 \
  && cmake --build /tmp/kda-build -j 4 >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
LIB=/tmp/kda-build/libkimi_kda_gpu.so

step "small case, plain"
/tmp/kda-build/kda_sanitize_case || status=1
step "compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 /tmp/kda-build/kda_sanitize_case > "$OUT/memcheck.log" 2>&1; rc=$?
tail -3 "$OUT/memcheck.log"; echo "memcheck rc=$rc"; [ $rc = 0 ] || status=1
step "compute-sanitizer racecheck"
compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 9 /tmp/kda-build/kda_sanitize_case > "$OUT/racecheck.log" 2>&1; rc=$?
tail -3 "$OUT/racecheck.log"; echo "racecheck rc=$rc"; [ $rc = 0 ] || status=1

step "check vs python_ref float64 and the CPU op"
PYTHONUNBUFFERED=1 timeout 300 python3 scripts/gpu_bench.py --lib $LIB --check --json "$OUT/check.json" 2>&1 | tail -25 || status=1

GG="$OUT/ggml_bench.txt"
if [ $DO_BENCH = 1 ]; then
  step "bench (ours, FLA)"
  PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-240} python3 scripts/gpu_bench.py --lib $LIB --bench --json "$OUT/bench.json" ${NO_FLA:+--no-fla} 2>&1 | tail -16
fi
if [ $DO_BENCH = 1 ]; then
  step "phase profile of the 64-token 16-bit path (T = 8192)"
  PYTHONUNBUFFERED=1 timeout 90 python3 scripts/kda64_profile.py --lib $LIB --json "$OUT/prof64.json" 2>&1 | tail -16
fi
if [ $DO_GGML = 1 ] && [ -n "${GGML_PID:-}" ]; then
  step "wait for ggml build"
  # bounded: the whole script must end inside the device's 10-minute command limit
  while kill -0 $GGML_PID 2>/dev/null && [ $SECONDS -lt ${GGML_WAIT_UNTIL:-480} ]; do sleep 5; done
  kill -0 $GGML_PID 2>/dev/null && { echo "ggml build still running at ${SECONDS}s: skipped"; kill $GGML_PID; }
  tail -2 "$OUT/ggml_build.log"
  if [ -x /tmp/ggml_gdn_bench ]; then
    step "llama.cpp GATED_DELTA_NET timing"
    # --decode alone: only T = 1 (the full list when the benchmark runs too)
    if [ $DO_DECODE = 1 ] && [ $DO_BENCH = 0 ]; then timeout 60 /tmp/ggml_gdn_bench 1 | tee "$GG"; else timeout 120 /tmp/ggml_gdn_bench | tee "$GG"; fi
  fi
fi
if [ $DO_DECODE = 1 ]; then
  step "decode step: every variant, checked and timed (llama.cpp from the line above)"
  PYTHONUNBUFFERED=1 timeout 180 python3 scripts/gpu_bench.py --lib $LIB --decode --ggml "$GG" --json "$OUT/decode.json" 2>&1 | tail -30 || status=1
fi
echo; echo "gpu_check status=$status"
exit $status
