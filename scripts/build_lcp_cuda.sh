#!/usr/bin/env bash
# build_lcp_cuda.sh - build llama-cpp-python 0.3.36 WITH CUDA (sm_90) from the pinned sdist, as a
# site-packages tarball in .whl-lcp/, for scripts/gpu_bridge_check.sh to carry to the GPU machine (which cannot
# download). Runs on a machine with nvcc and no GPU (this one): ~35 min on 2 cores.
#
# The toolkit here lacks cuBLAS, which ggml-cuda links: take it from NVIDIA's wheel
#   pip download --no-deps --only-binary=:all: nvidia-cublas -d /tmp/cublas && unzip it, then
#   CUBLAS_DIR=/tmp/cublas/nvidia/cu13 scripts/build_lcp_cuda.sh
# Options: no flash-attention kernels (the exact path this project uses never runs them; they are
# most of the build time), no VMM pool (no libcuda stub here), AVX2-level CPU code (the GPU
# machine's CPU is another model than this one).
set -eu -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
SDIST=.cache/llama_cpp_python-0.3.36.tar.gz
[ -f "$SDIST" ] || make sdist
CUDA=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$CUDA/include/cublas_v2.h" ]; then
  : "${CUBLAS_DIR:?no cuBLAS in $CUDA: set CUBLAS_DIR to the nvidia/cu13 folder of an unpacked nvidia-cublas wheel}"
  cp -n "$CUBLAS_DIR"/include/cublas*.h "$CUDA/include/"
  cp -n "$CUBLAS_DIR"/lib/libcublas*.so.13 "$CUDA/lib64/"
  ln -sf libcublas.so.13 "$CUDA/lib64/libcublas.so"; ln -sf libcublasLt.so.13 "$CUDA/lib64/libcublasLt.so"
fi
export CUDACXX=${CUDACXX:-$(command -v nvcc)} CUDAToolkit_ROOT=$CUDA CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
export CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DGGML_CUDA_NO_VMM=ON \
 -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
mkdir -p .whl-lcp
W=$(mktemp -d)
.venv/bin/pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$W" "$SDIST"
# The wheel (190 MB) stores every library three times (symlinks become copies) plus a second lib/.
# Keep what site-packages needs, one copy per library with its soname links: ~28 MB compressed.
X=$(mktemp -d); (cd "$X" && unzip -q "$W"/llama_cpp_python-*.whl)
(cd "$X/llama_cpp/lib" && for f in *.so.0.*; do base=${f%%.so.*}; rm -f "$base.so" "$base.so.0"
   ln -s "$f" "$base.so.0"; ln -s "$base.so.0" "$base.so"; done)
tar cJf .whl-lcp/llama_cpp_cuda.tar.xz -C "$X" llama_cpp include llama_cpp_python-0.3.36.dist-info
rm -rf "$W" "$X"
ls -la .whl-lcp
