"""Where do bridge (GPU) and builtin (llama.cpp CUDA op) logits part? The tiny model with all
layers on the GPU, several ways:

1. logits only (no eval callback, so the scheduler runs its normal splits): builtin, ours with
   each math/algorithm, delegate mode, and ours under the debug switches (KIMI_BRIDGE_VERIFY,
   KIMI_BRIDGE_SYNC_START); also the prompt fed in 16-token ubatches (the state carried between
   graphs). Rows: relative L2 error per position vs builtin and vs the float64 reference.
2. per-label capture (kimi_gguf.parity.llama_capture: the scheduler stops after every labelled
   node) of builtin and ours: the first graph label where they part, and each label vs float64.
   If (1) differs and (2) does not, the difference needs the normal split timing (a race).

    python scripts/gpu_bridge_diag.py [--work /tmp/diag] [--layers -1]
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def rows_rel(a, b):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


@contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update({k: str(v) for k, v in kv.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/diag")
    ap.add_argument("--layers", type=int, default=-1, help="n_gpu_layers (-1: all)")
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    from kimi_gguf.convert.api import convert_model
    from kimi_gguf.ggml_ops import bridge
    from kimi_gguf.ggml_ops.llama_session import LlamaSession, quiet_llama_logs
    from kimi_gguf.parity.llama_capture import default_labels, run_llama
    from kimi_gguf.parity.sources import reference_run
    from kimi_gguf.spec import ModelSpec
    from kimi_gguf.tiny import make_tiny

    work = Path(args.work)
    tiny = make_tiny(work / "tiny", seed=0, force=True)
    gguf = work / "tiny-f32.gguf"
    convert_model(tiny, str(gguf), "f32", force=True)
    quiet_llama_logs()
    with LlamaSession(gguf, n_threads=2) as s:
        vocab = s.n_vocab
    prompt = [int(t) for t in np.random.default_rng(20261127).integers(0, vocab, size=args.tokens)]
    ref, ref_labels = reference_run(tiny, np.asarray(prompt, np.int64), "llamacpp")

    def run(kda, algo="auto", math="default", delegate=False, n_batch=512):
        if kda == "ours":
            bridge.enable_bridge(gpu=True)
            bridge.set_algo(algo)
            bridge.set_cuda_math(math)
        else:
            bridge.disable_bridge()
        bridge.set_delegate(delegate)
        bridge.reset_stats()
        with LlamaSession(gguf, n_threads=2, n_gpu_layers=args.layers, n_batch=n_batch) as s:
            out = s.prefill(prompt)
        st = bridge.stats()
        bridge.set_delegate(False)
        bridge.set_algo("auto")
        bridge.set_cuda_math("default")
        return out, st

    print("== 1. logits (normal scheduling)", flush=True)
    base, _ = run("builtin")
    base16, _ = run("builtin", n_batch=16)
    runs = {"builtin (again)": (run("builtin"), base),
            "ours default": (run("ours"), base),
            "ours default (again)": (run("ours"), base),
            "ours fp32": (run("ours", math="fp32"), base),
            "ours recurrent": (run("ours", algo="recurrent"), base),
            "delegate": (run("ours", delegate=True), base)}
    with env(KIMI_BRIDGE_SYNC_START=1):
        runs["ours SYNC_START"] = (run("ours"), base)
    with env(KIMI_BRIDGE_VERIFY=1):
        runs["ours VERIFY"] = (run("ours"), base)
    runs["builtin ubatch 16 (vs builtin 512)"] = ((base16, None), base)
    runs["ours ubatch 16 (vs builtin 16)"] = (run("ours", n_batch=16), base16)
    e_base = rows_rel(base, ref)
    print(f"builtin vs float64: max {e_base.max():.3g}; rows {np.array2string(e_base[:8], precision=2)}")
    for name, ((out, st), against) in runs.items():
        e = rows_rel(out, against)
        er = rows_rel(out, ref)
        first = int(np.argmax(e > 1e-5)) if (e > 1e-5).any() else -1
        calls = f"calls {st.calls:3d} gpu {st.gpu_calls:3d}" if st is not None else "calls   - gpu   -"
        print(f"{name:36s} {calls} | vs anchor max {e.max():.3g} first row >1e-5: {first:3d} "
              f"| vs float64 max {er.max():.3g}")
        print(f"    vs anchor rows {np.array2string(e[:8], precision=2)}", flush=True)

    print("\n== 2. per-label capture (scheduler stops after each labelled node)", flush=True)
    labels = default_labels(ModelSpec.from_dir(tiny).num_layers)
    # flash attention off and an f32 cache: the exact path, as LlamaSession uses above
    cb = run_llama(gguf, prompt, labels, kda="builtin", n_gpu_layers=args.layers, flash_attn=False)
    co = run_llama(gguf, prompt, labels, kda="ours", n_gpu_layers=args.layers, flash_attn=False)
    print(f"ours bridge calls {co.bridge_calls}; logits ours vs builtin {rows_rel(co.logits, cb.logits).max():.3g}, "
          f"builtin vs float64 {rows_rel(cb.logits, ref).max():.3g}, ours vs float64 {rows_rel(co.logits, ref).max():.3g}")
    first = None
    for name in cb.order:
        if name not in co.tensors:
            print(f"  {name:20s} missing in ours")
            continue
        a, b = co.tensors[name], cb.tensors[name]
        if name.startswith("ffn_moe_topk"):
            print(f"  {name:20s} expert ids differ at {int((a != b).sum())} places")
            continue
        d = rows_rel(a, b).max()
        r = ref_labels.get(name)
        dr = f"{rows_rel(b, r).max():9.3g}" if r is not None and r.shape == b.shape else "        -"
        flag = ""
        if d > 1e-5 and first is None:
            first, flag = name, "  <== first label > 1e-5"
        print(f"  {name:20s} ours vs builtin {d:9.3g} | builtin vs float64 {dr}{flag}")
    print(f"first label where ours and builtin part: {first}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
