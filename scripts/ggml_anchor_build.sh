#!/usr/bin/env bash
# ggml_anchor_build.sh - (on a CUDA machine) build llama.cpp's ggml with CUDA from the pinned sdist's
# vendored source (.cache/ggml-src/ggml, with an empty ggml.pc.in) and the GATED_DELTA_NET timer
# scripts/ggml_gdn_bench.cpp against it: /tmp/ggml-build, /tmp/ggml_gdn_bench. CUDA graphs on, as in
# llama.cpp's own build; sm_90. Prints GGML_BUILD_OK at the end. Used by gpu_check.sh and gpu_ab.sh.
set -e -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
cmake -S .cache/ggml-src/ggml -B /tmp/ggml-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DGGML_CUDA_GRAPHS=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=ON
cmake --build /tmp/ggml-build -j "${JOBS:-12}"
g++ -O2 -std=c++17 scripts/ggml_gdn_bench.cpp -I.cache/ggml-src/ggml/include -I.cache/ggml-src/ggml/src -I"$CUDA_HOME/include" \
  -L/tmp/ggml-build/src -L/tmp/ggml-build/src/ggml-cuda -L"$CUDA_HOME/lib64" \
  -Wl,-rpath,/tmp/ggml-build/src:/tmp/ggml-build/src/ggml-cuda -Wl,--allow-shlib-undefined -lggml -lggml-base -lggml-cuda -lcudart -o /tmp/ggml_gdn_bench
echo GGML_BUILD_OK
