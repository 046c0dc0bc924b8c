#!/usr/bin/env bash
# gpu_bridge_profile.sh - after gpu_bridge_check.sh has set up /tmp/venv and build/ on the device:
# the real-width bench model's splits and prompt time per mode (bridge_splits.py), and, where
# Nsight Systems is installed, one profiled pp run per mode with its kernel and API summaries.
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
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  for mode in builtin ours; do
    echo "=== nsys: $mode ($(date +%T))"
    timeout 150 "$NSYS" profile -t cuda,osrt -o "$OUT/nsys_$mode" --force-overwrite true \
      $PY scripts/bridge_splits.py --gguf "$GGUF" --tokens $TOKENS --rounds 1 --debug-tokens 0 --modes $mode > "$OUT/nsys_$mode.log" 2>&1
    tail -2 "$OUT/nsys_$mode.log"
    timeout 120 "$NSYS" stats -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum --format csv -o "$OUT/stats_$mode" \
      "$OUT/nsys_$mode.nsys-rep" > /dev/null 2>&1
    for f in "$OUT"/stats_${mode}_*.csv; do echo "--- $(basename "$f")"; head -12 "$f" | cut -c1-220; done
    rm -f "$OUT/nsys_$mode.sqlite" "$OUT/nsys_$mode.nsys-rep"
  done
else
  echo "no nsys on this machine"
fi
