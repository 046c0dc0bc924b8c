#!/usr/bin/env bash
# gpu_bridge_check.sh - on a CUDA machine, in one go: install a llama-cpp-python 0.3.36 built with
# CUDA, build our ops + bridge against it (nvcc), run the bridge tests on the CPU and the GPU, and
# benchmark prompt processing / generation with the KDA op in llama.cpp's CUDA op vs the bridge.
#
# Needs (carried by the caller, ignored by git):
#   .whl-lcp/llama_cpp_cuda.tar.xz  llama-cpp-python 0.3.36 built with CUDA from the pinned sdist,
#               trimmed to what an install puts in site-packages (scripts/build_lcp_cuda.sh)
#   .whl/       gguf, cffi, pycparser, diskcache wheels (what the device image lacks)
#   .cache/ggml-src/ggml   the sdist's vendor/llama.cpp/ggml (ggml-backend-impl.h, version)
# Usage: OUT=/tmp/out [DIAG=1] [SPLITS=1 [SPLITS_ARGS=...]] [GUARD=1] [KDA_CHECK_S=32,128] scripts/gpu_bridge_check.sh [--no-tests] [--no-bench] [bench args...]
set -u -o pipefail
OUT=${OUT:-/tmp/bridge_out}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
DO_TESTS=1; DO_BENCH=1; BENCH_ARGS=()
for a in "$@"; do case $a in --no-tests) DO_TESTS=0;; --no-bench) DO_BENCH=0;; *) BENCH_ARGS+=("$a");; esac; done
step() { echo; echo "=== $* ($(date +%T), ${SECONDS}s)"; }
status=0

step device
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv

step "venv (system site packages + carried wheels)"
python3 -m venv --system-site-packages /tmp/venv || exit 1
PY=/tmp/venv/bin/python
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# the image's packages are not all in the site dirs a venv links to: see everything python3 sees
python3 -c "import sys; print('\n'.join(p for p in sys.path if p.startswith('/')))" > "$SITE/zz_image.pth"
tar xJf .whl-lcp/llama_cpp_cuda.tar.xz -C "$SITE" || exit 1  # the CUDA wheel's llama_cpp/, include/, dist-info
$PY -m pip install -q --no-index --no-deps --no-compile .whl/gguf-*.whl .whl/cffi-*.whl .whl/pycparser-*.whl \
  .whl/diskcache-*.whl || exit 1
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
# libggml-cuda needs libcublas from the image's nvidia-cublas wheel
CUBLAS=$($PY -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null)
export LD_LIBRARY_PATH=${CUBLAS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
$PY -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())" || exit 1

step "build ops + bridge (sm_90a)"
cmake -S . -B build -G Ninja -DPython_EXECUTABLE=$PY -DKIMI_LLAMA_SRC="$ROOT/.cache/ggml-src" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/build.log" 2>&1 \
  && cmake --build build -j 16 >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
grep -E "kimi bridge|kimi_kda:" "$OUT/build.log" | head -3

if [ -n "${KDA_CHECK_S:-}" ]; then
  step "CUDA KDA op vs float64 at S_v in $KDA_CHECK_S (the tiny model's head size is 32)"
  PYTHONUNBUFFERED=1 KIMI_CHECK_S=$KDA_CHECK_S timeout 240 $PY scripts/gpu_bench.py --lib build/ggml_ops/libkimi_kda.so \
    --check --json "$OUT/check.json" 2>&1 | tail -12 || status=1
fi

if [ -n "${GUARD:-}" ]; then
  step "out-of-bounds write check of the CUDA op (guard regions)"
  PYTHONUNBUFFERED=1 timeout 200 $PY scripts/gpu_guard_check.py --lib build/ggml_ops/libkimi_kda.so 2>&1 | tail -15 || status=1
fi

if [ -n "${DIAG:-}" ]; then
  step "where bridge and builtin logits part (scripts/gpu_bridge_diag.py)"
  PYTHONUNBUFFERED=1 timeout 240 $PY scripts/gpu_bridge_diag.py --work /tmp/diag 2>&1 | tee "$OUT/diag_full.txt" | grep -v "^kimi bridge verify" \
    | head -150 || status=1
fi

if [ -n "${SPLITS:-}" ]; then
  step "scheduler splits and their cost (scripts/bridge_splits.py${SPLITS_ARGS:+ $SPLITS_ARGS})"
  PYTHONUNBUFFERED=1 timeout 240 $PY scripts/bridge_splits.py ${SPLITS_ARGS:-} 2>&1 | tee "$OUT/splits.txt" | head -80 || status=1
fi

# A/B of debug switches on one test: AB_ENVS="KIMI_BRIDGE_SYNC_START=1 KIMI_KDA_CUDA_PDL=0"
for e in ${AB_ENVS:-}; do
  step "A/B: $e"
  env "$e" timeout 120 $PY -m pytest -q --tb=line tests/test_bridge.py -k "prefill_matches and cuda" -p no:cacheprovider 2>&1 | tail -3
done

if [ $DO_TESTS = 1 ]; then
  step "bridge tests (CPU and GPU)"
  PYTHONUNBUFFERED=1 timeout 300 $PY -m pytest -q -rfs --tb=short ${TEST_ARGS:-tests/test_bridge.py} -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25 || status=1
fi

if [ $DO_BENCH = 1 ]; then
  step "bench: builtin (llama.cpp CUDA op) vs bridge (our CUDA kernels)"
  PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-360} $PY scripts/bench_bridge.py --work /tmp/bench_bridge --threads 16 \
    --gpu-layers -1 --modes builtin,ours,delegate --rounds 1 --gen 64 "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/bench.txt" | tail -20 || status=1
fi
echo; echo "gpu_bridge_check status=$status"
exit $status
