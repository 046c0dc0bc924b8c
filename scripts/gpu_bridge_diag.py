"""Where do bridge (GPU) and builtin (llama.cpp CUDA op) logits part? Per-row errors of several runs
of the tiny model (all layers on the GPU) against llama.cpp's CUDA op and the float64 reference.

    python scripts/gpu_bridge_diag.py [--work /tmp/diag]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def rows_rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/diag")
    args = ap.parse_args()
    from kimi_gguf.convert.api import convert_model
    from kimi_gguf.ggml_ops import bridge
    from kimi_gguf.ggml_ops.llama_session import LlamaSession, quiet_llama_logs
    from kimi_gguf.parity.sources import reference_run
    from kimi_gguf.tiny import make_tiny

    work = Path(args.work)
    tiny = make_tiny(work / "tiny", seed=0, force=True)
    gguf = work / "tiny-f32.gguf"
    convert_model(tiny, str(gguf), "f32", force=True)
    quiet_llama_logs()
    with LlamaSession(gguf, n_threads=2) as s:
        vocab = s.n_vocab
    prompt = [int(t) for t in np.random.default_rng(20261127).integers(0, vocab, size=48)]
    ref = reference_run(tiny, np.asarray(prompt, np.int64), "llamacpp")[0]

    def run(kda, layers, algo="auto", math="default", delegate=False):
        if kda == "ours":
            bridge.enable_bridge()
            bridge.set_algo(algo)
            bridge.set_cuda_math(math)
        else:
            bridge.disable_bridge()
        bridge.set_delegate(delegate)
        bridge.reset_stats()
        with LlamaSession(gguf, n_threads=2, n_gpu_layers=layers) as s:
            out = s.prefill(prompt)
        st = bridge.stats()
        bridge.set_delegate(False)
        bridge.set_algo("auto")
        bridge.set_cuda_math("default")
        return out, st

    base, _ = run("builtin", -1)
    runs = {
        "builtin gpu (again)": run("builtin", -1),
        "ours gpu default": run("ours", -1),
        "ours gpu default (again)": run("ours", -1),
        "ours gpu fp32": run("ours", -1, math="fp32"),
        "ours gpu recurrent": run("ours", -1, algo="recurrent"),
        "delegate gpu": run("ours", -1, delegate=True),
    }
    e_base = rows_rel(base, ref)
    print(f"builtin gpu vs float64: max {e_base.max():.3g}; rows {np.array2string(e_base[:12], precision=2)}")
    for name, (out, st) in runs.items():
        e = rows_rel(out, base)
        er = rows_rel(out, ref)
        first = int(np.argmax(e > 1e-5)) if (e > 1e-5).any() else -1
        print(f"{name:26s} calls {st.calls:3d} gpu {st.gpu_calls:3d} | vs builtin max {e.max():.3g} first row >1e-5: {first} "
              f"| vs float64 max {er.max():.3g}")
        print(f"    vs builtin rows {np.array2string(e[:12], precision=2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
