#!/usr/bin/env bash
# gpu_bridge_profile.sh - after gpu_bridge_check.sh has set up /tmp/venv and build/ on the device:
# the real-width bench model's splits, its prompt time per mode, and one pp run per mode under
# torch.profiler (CUPTI: GPU kernel time vs wall, host CUDA calls) -- all bridge_splits.py.
# Usage: OUT=/tmp/out TOKENS=8192 bash scripts/gpu_bridge_profile.sh
set -u -o pipefail
OUT=${OUT:-/tmp/profile_out}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
PY=/tmp/venv/bin/python
TOKENS=${TOKENS:-8192}
CUBLAS=$($PY -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))")
export LD_LIBRARY_PATH=$CUBLAS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "=== bench model ($(date +%T))"
PYTHONUNBUFFERED=1 timeout 200 $PY scripts/bench_bridge.py --work /tmp/bench_bridge --gpu-layers -1 --modes builtin \
  --rounds 1 --lengths 64 --gen 0 2>&1 | grep "model ready"
GGUF=$(ls /tmp/bench_bridge/*.gguf | head -1)
echo "=== splits + pp$TOKENS per mode ($(date +%T))"
PYTHONUNBUFFERED=1 timeout 200 $PY scripts/bridge_splits.py --gguf "$GGUF" --tokens $TOKENS --rounds 3 --debug-tokens 256 \
  --modes builtin,ours,delegate --profile 2>&1 | tee "$OUT/splits_bench.txt" | grep -v "^    split\|^USDT" | head -80
