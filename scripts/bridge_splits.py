"""How llama.cpp's scheduler splits a graph with and without the bridge, and what each split costs.

Part 1 (GGML_SCHED_DEBUG=1): the splits of one prompt's graph per mode -- backend, node count and
the inputs the scheduler copies into it. Part 2: prompt-processing time per mode (one graph of
--tokens tokens, best of --rounds interleaved rounds). Modes as in bench_bridge.py: builtin (llama.cpp's
op), ours (the bridge), delegate (the bridge's placement, ggml's op: the cost of the splits alone).

    python scripts/bridge_splits.py [--gguf MODEL.gguf] [--layers -1] [--tokens 8192]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench_bridge import set_mode  # the same modes as the benchmark (scripts/ is on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="model (default: the tiny model, converted to f32 under --work)")
    ap.add_argument("--work", default="/tmp/splits")
    ap.add_argument("--layers", type=int, default=-1)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--debug-tokens", type=int, default=64, help="prompt of part 1 (0: skip part 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all cores)")
    ap.add_argument("--shim", help="scripts/ggml_time_shim.c built as a .so and LD_PRELOADed: print its ggml call "
                                   "times after each timed prompt")
    ap.add_argument("--modes", default="builtin,ours,delegate")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds: one more pp run per mode under torch.profiler (CUPTI sees ggml's "
                         "kernels too): GPU kernel time vs wall time, and the kernels whose time differs most")
    args = ap.parse_args()
    import llama_cpp
    from kimi_gguf.ggml_ops import bridge
    from kimi_gguf.ggml_ops.llama_session import LlamaSession

    gguf = args.gguf
    if gguf is None:
        from kimi_gguf.convert.api import convert_model
        from kimi_gguf.tiny import make_tiny

        tiny = make_tiny(Path(args.work) / "tiny", seed=0, force=True)
        gguf = str(Path(args.work) / "tiny-f32.gguf")
        convert_model(tiny, gguf, "f32", force=True)

    log: list[str] = []
    keep = llama_cpp.llama_log_callback(lambda level, text, user: log.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))

    modes = args.modes.split(",")
    rng = np.random.default_rng(0)
    shim = None
    if args.shim:
        shim = ctypes.CDLL(args.shim)  # the LD_PRELOADed copy: same handle
        shim.shim_report.argtypes = [ctypes.c_char_p]
    print("== 1. splits (GGML_SCHED_DEBUG=1)")
    for mode in modes if args.debug_tokens else []:
        set_mode(mode)
        os.environ["GGML_SCHED_DEBUG"] = "1"
        try:
            with LlamaSession(gguf, n_ctx=args.debug_tokens + 16, n_batch=args.debug_tokens, n_gpu_layers=args.layers) as s:
                log.clear()
                s.prefill([int(t) for t in rng.integers(0, 1000, size=args.debug_tokens)], logits=False)
        finally:
            os.environ.pop("GGML_SCHED_DEBUG", None)
        text = "".join(log)
        splits = re.findall(r"## SPLIT #(\d+): (\S+) # (\d+) inputs([^\n]*)", text)
        per_backend = Counter(b for _, b, _, _ in splits)
        n_in = sum(int(n) for _, _, n, _ in splits)
        print(f"{mode:9s} splits {len(splits)} {dict(per_backend)}; inputs copied {n_in}")
        for sid, b, n, rest in splits[:40]:
            if int(n):
                print(f"    split {sid} {b}: {rest.strip()[:200]}")
    print(f"\n== 2. prompt processing, {args.tokens} tokens in one graph, {args.rounds} rounds: the first "
          f"prompt of that length in a fresh context (cold) and the next one (warm)")
    times = {m: {"cold": [], "warm": []} for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            set_mode(mode)
            with LlamaSession(gguf, n_ctx=args.tokens + 16, n_batch=args.tokens, n_gpu_layers=args.layers,
                              n_threads=args.threads) as s:
                s.prefill([int(t) for t in rng.integers(0, 1000, size=32)], logits=False)
                line = []
                for phase in ("cold", "warm"):
                    s.clear()
                    ids = [int(t) for t in rng.integers(0, 1000, size=args.tokens)]
                    bridge.reset_stats()
                    if shim:
                        shim.shim_report(b"(discard)")
                    t0 = time.perf_counter()
                    s.prefill(ids, logits=False)
                    s.synchronize()  # llama_decode returns once the graph is queued
                    times[mode][phase].append(time.perf_counter() - t0)
                    if shim:
                        print(f"-- shim: round {r} {mode} {phase}: {1e3 * times[mode][phase][-1]:.2f} ms", file=sys.stderr,
                              flush=True)
                        shim.shim_report(f"{mode}/{phase}".encode())
                    st = bridge.stats()
                    line.append(f"{phase} {1e3 * times[mode][phase][-1]:8.2f} ms ({1e3 * st.seconds:.2f} ms in the bridge)")
            print(f"  round {r} {mode:9s} " + " | ".join(line), flush=True)
    for mode in modes:
        print(f"{mode:9s} " + " | ".join(f"{ph} best {1e3 * min(v):8.2f} median {1e3 * float(np.median(v)):8.2f} ms"
                                         for ph, v in times[mode].items()))
    if args.profile:
        profile_modes(gguf, modes, args, rng)
    bridge.set_delegate(False)
    return 0


def profile_modes(gguf, modes, args, rng) -> None:
    """GPU kernel time (sum over kernels), GPU busy span, and wall time of one pp run per mode."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kimi_gguf.ggml_ops.llama_session import LlamaSession

    print(f"\n== 3. torch.profiler (CUPTI), one warm pp{args.tokens} run per mode")
    per_mode = {}
    for mode in modes:
        set_mode(mode)
        with LlamaSession(gguf, n_ctx=args.tokens + 16, n_batch=args.tokens, n_gpu_layers=args.layers) as s:
            s.prefill([int(t) for t in rng.integers(0, 1000, size=args.tokens)], logits=False)  # warm
            s.clear()
            ids = [int(t) for t in rng.integers(0, 1000, size=args.tokens)]
            gpu = torch.cuda.is_available()
            if gpu:
                torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
                t0 = time.perf_counter()
                s.prefill(ids, logits=False)
                s.synchronize()
                wall = time.perf_counter() - t0
        kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.time_range.elapsed_us() for e in kern) / 1e3  # us -> ms
        span = (max(e.time_range.end for e in kern) - min(e.time_range.start for e in kern)) / 1e3 if kern else 0.0
        by_name = Counter()
        for e in kern:
            by_name[e.name[:90]] += e.time_range.elapsed_us() / 1e3
        per_mode[mode] = by_name
        print(f"{mode:9s} wall {1e3 * wall:8.2f} ms | GPU kernels+copies {busy:8.2f} ms over a span of {span:8.2f} ms "
              f"({len(kern)} GPU events)")
        # host side: CUDA runtime calls (CUPTI records them as CPU events)
        api = Counter()
        n_api = Counter()
        for e in prof.events():
            if e.device_type != torch.autograd.DeviceType.CUDA and e.name.startswith("cu"):
                api[e.name] += e.time_range.elapsed_us() / 1e3
                n_api[e.name] += 1
        for name, ms in api.most_common(8):
            print(f"    host {name:40s} {ms:8.2f} ms in {n_api[name]} calls")
    if "builtin" in per_mode:
        for mode, by_name in per_mode.items():
            if mode == "builtin":
                continue
            diff = Counter({k: by_name.get(k, 0.0) - per_mode["builtin"].get(k, 0.0)
                            for k in set(by_name) | set(per_mode["builtin"])})
            print(f"  {mode} - builtin, largest differences (ms):")
            for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:12]:
                print(f"    {v:+9.2f}  {k}")


if __name__ == "__main__":
    raise SystemExit(main())
