"""Bridge benchmark: prompt processing (512, 8192 tokens) and generation, bridge vs builtin, one run.

    .venv/bin/python scripts/bench_bridge.py --work out/bench_bridge [--threads 2] [--experts 8]
    python scripts/bench_bridge.py --gpu-layers -1 --ubatch 8192 --modes builtin,ours   # CUDA build

Model: a random Kimi Linear at the published widths (hidden 2304, 32 heads x 128 for KDA, MLA with
kv_lora_rank 512, q/k nope 128 + rope 64, v 128, dense layer-0 FFN 9216, MoE intermediate 1024,
8 experts per token + 1 shared) and the real layer pattern (KDA, KDA, KDA, MLA) x 2 = 8 layers,
written as a checkpoint with the tiny checkpoint's generator, converted with `convert_model` to q8_0.
Two reductions, both stated in BENCHMARKS.md: --experts routed experts instead of 256 (each token
still runs 8 experts + the shared one, so the per-token FFN work is the real one), and the tiny
tokenizer's vocabulary (1355) instead of 163840 (smaller embedding/lm_head).

Modes, each in a fresh context on the same GGUF: builtin (llama.cpp's own KDA op), ours (the
bridge), and delegate (the op moved into the bridge but computed by ggml's own CPU op, timed there:
the builtin op's share of the time, measured in place; on the GPU device: ggml's CUDA op).

On a llama-cpp-python built with CUDA, --gpu-layers -1 offloads every layer: builtin is then
llama.cpp's CUDA op and ours the bridge's GPU device (--cuda-math picks the chunked kernel's math).
--ubatch sets the tokens per graph, i.e. the T of each KDA call (llama.cpp's default is 512).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def make_checkpoint(out: Path, experts: int, seed: int = 0) -> Path:
    from kimi_gguf.tiny import NUM_SHARDS, TinyDims, _write_shards, tiny_config, tiny_tensors
    from kimi_gguf.tokenizer.bpe_train import DEFAULT_MERGES, builtin_corpus, train_bpe
    from kimi_gguf.tokenizer.files import write_tokenizer_files

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    dims = TinyDims(hidden=2304, layers=8, full_attn_every=4, heads=32, kda_head_dim=128, conv_kernel=4,
                    qk_nope=128, qk_rope=64, v_head_dim=128, kv_lora_rank=512, intermediate=9216,
                    experts=experts, top_k=8, moe_intermediate=1024, shared_experts=1)
    ranks = train_bpe(builtin_corpus(), num_merges=DEFAULT_MERGES)
    cfg = tiny_config(len(ranks), dims)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    _write_shards(tmp, tiny_tensors(cfg, seed), NUM_SHARDS)
    write_tokenizer_files(tmp, ranks)
    tmp.rename(out)
    return out


def make_gguf(ckpt: Path, out: Path) -> Path:
    from kimi_gguf.convert.api import convert_model

    if not out.is_file():
        convert_model(ckpt, str(out), "q8_0")
    return out


def set_mode(mode: str, cuda_math: str = "default") -> None:
    """builtin | ours | delegate | ours@<math> (the bridge with that CUDA math, e.g. ours@f16)."""
    from kimi_gguf.ggml_ops import bridge

    if mode == "builtin":
        bridge.disable_bridge()
    else:
        bridge.enable_bridge(gpu=True)  # used only when layers are offloaded
        bridge.set_cuda_math(mode.split("@", 1)[1] if "@" in mode else cuda_math)
    bridge.set_delegate(mode == "delegate")


def measure(gguf: Path, mode: str, threads: int, lengths: list[int], n_gen: int, vocab_hi: int, seed: int,
            gpu_layers: int = 0, ubatch: int = 512, cuda_math: str = "default", warm: int = 0, reps: int = 1) -> dict:
    """One fresh context: prompt processing at each length, then generation after a 512-token prompt.
    warm: untimed prompts of the same length first (steady state: buffers sized, ggml-cuda's CUDA
    graphs captured); reps: timed prompts per length, the median is reported."""
    from kimi_gguf.ggml_ops import bridge
    from kimi_gguf.ggml_ops.llama_session import LlamaSession, quiet_llama_logs

    quiet_llama_logs()
    set_mode(mode, cuda_math)
    rng = np.random.default_rng(seed)
    res = {}
    n_ctx = max(lengths + [512]) + n_gen + 64
    n_batch = max(2048, ubatch)
    with LlamaSession(gguf, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=ubatch, n_threads=threads,
                      n_gpu_layers=gpu_layers) as s:
        s.prefill([int(t) for t in rng.integers(0, vocab_hi, size=32)], logits=False)  # warm-up
        for n in lengths:
            for _ in range(warm):
                s.clear()
                s.prefill([int(t) for t in rng.integers(0, vocab_hi, size=n)], logits=False)
            dts, kda = [], []
            for _ in range(reps):
                s.clear()
                ids = [int(t) for t in rng.integers(0, vocab_hi, size=n)]
                bridge.reset_stats()
                t0 = time.perf_counter()
                s.prefill(ids, logits=False)
                s.synchronize()  # the GPU's work is queued, not done, when llama_decode returns
                dts.append(time.perf_counter() - t0)
                st = bridge.stats()
                kda.append(st.seconds)
            dt = float(np.median(dts))
            res[f"pp{n}"] = {"tok_s": n / dt, "seconds": dt, "kda_seconds": float(np.median(kda)), "kda_calls": st.calls}
        if n_gen:
            # generation after a 512-token prompt (the one just timed, if any), one token per
            # llama_decode, logits each step
            if not lengths or lengths[-1] != 512:
                s.clear()
                s.prefill([int(t) for t in rng.integers(0, vocab_hi, size=512)], logits=False)
            bridge.reset_stats()
            toks = [int(t) for t in rng.integers(0, vocab_hi, size=n_gen)]
            t0 = time.perf_counter()
            for i, t in enumerate(toks):
                s.decode([(0, [t], 512 + i)])
            dt = time.perf_counter() - t0
            st = bridge.stats()
            res["tg"] = {"tok_s": n_gen / dt, "seconds": dt, "kda_seconds": st.seconds, "kda_calls": st.calls}
    bridge.set_delegate(False)
    return res


def summarize(runs: list[dict]) -> dict:
    """Per test: the best run (highest tok/s; the least disturbed on a shared machine) and the median."""
    out = {}
    for key in runs[0]:
        rs = sorted((r[key] for r in runs), key=lambda r: -r["tok_s"])
        best = dict(rs[0])
        best["median_tok_s"] = float(np.median([r["tok_s"] for r in rs]))
        best["runs"] = len(rs)
        out[key] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="out/bench_bridge", help="checkpoint + GGUF cache folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--lengths", default="512,8192")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--modes", default="builtin,ours,delegate",
                    help="comma list of builtin, ours, delegate, ours@<math> (e.g. ours@f16: that CUDA math)")
    ap.add_argument("--long-rounds", type=int, default=1, help="interleaved rounds of the long prompts")
    ap.add_argument("--warm", type=int, default=0, help="untimed prompts of each length before timing (steady state)")
    ap.add_argument("--reps", type=int, default=1, help="timed prompts per length and context (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the short tests")
    ap.add_argument("--gpu-layers", type=int, default=0, help="-1: offload all (llama-cpp-python built with CUDA)")
    ap.add_argument("--ubatch", type=int, default=512, help="tokens per graph = T of each KDA call")
    ap.add_argument("--cuda-math", default="default", help="bridge CUDA kernel math: default, tf32x3, tf32, fp32, f16, bf16 (16-bit: S_v = 128 only)")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = make_checkpoint(work / f"kimi-realwidth-e{args.experts}", args.experts)
    gguf = make_gguf(ckpt, work / f"kimi-realwidth-e{args.experts}-q8_0.gguf")
    print(f"# model ready in {time.perf_counter() - t0:.0f} s: {gguf} ({gguf.stat().st_size / 2**30:.2f} GiB)",
          file=sys.stderr)
    lengths = [int(x) for x in args.lengths.split(",")]
    long = [n for n in lengths if n > 512]
    short = [n for n in lengths if n <= 512]
    vocab_hi = 1000  # ordinary tokens of the tiny tokenizer
    modes = args.modes.split(",")
    kw = dict(gpu_layers=args.gpu_layers, ubatch=args.ubatch, cuda_math=args.cuda_math, warm=args.warm, reps=args.reps)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    long_runs: dict[str, list[dict]] = {m: [] for m in modes}
    # Interleaved rounds (builtin, ours, delegate, builtin, ...) so that load from other processes
    # hits every mode alike; long prompts once per mode (minutes each on 2 threads).
    for r in range(args.rounds):
        for mode in modes:
            res = measure(gguf, mode, args.threads, short, args.gen, vocab_hi, seed=r, **kw)
            runs[mode].append(res)
            print(f"# round {r} {mode}: {json.dumps(res)}", file=sys.stderr, flush=True)
    for r in range(args.long_rounds if long else 0):
        for mode in modes:
            res = measure(gguf, mode, args.threads, long, 0, vocab_hi, seed=100 + r, **kw)
            long_runs[mode].append(res)
            print(f"# long round {r} {mode}: {json.dumps(res)}", file=sys.stderr, flush=True)
    results = {m: {**summarize(runs[m]), **(summarize(long_runs[m]) if long_runs[m] else {})} for m in modes}
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []

    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads, "loadavg_end": load,
                      "gpu_layers": args.gpu_layers, "ubatch": args.ubatch, "cuda_math": args.cuda_math,
                      "warm": args.warm, "reps": args.reps,
                      "experts": args.experts, "gguf": str(gguf), "results": results}))
    # one row per test and bridge mode; the builtin op's share of the time comes from delegate mode
    rows = ["| test | mode | builtin tok/s (median) | mode tok/s (median) | mode / builtin (best) | KDA op s, builtin (delegate) | KDA op s, mode | KDA share builtin | KDA share mode |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key in [f"pp{n}" for n in lengths] + ["tg"]:
        b = results.get("builtin", {}).get(key)
        d = results.get("delegate", {}).get(key)
        for mode in modes:
            o = results[mode].get(key)
            if mode in ("builtin", "delegate") or not (b and o):
                continue
            kd = f"{d['kda_seconds']:.3f}" if d else "-"
            share_d = f"{100 * d['kda_seconds'] / d['seconds']:.1f}%" if d else "-"
            share_o = f"{100 * o['kda_seconds'] / o['seconds']:.1f}%"
            rows.append(f"| {key} | {mode} | {b['tok_s']:.2f} ({b['median_tok_s']:.2f}) | {o['tok_s']:.2f} ({o['median_tok_s']:.2f}) | "
                        f"{o['tok_s'] / b['tok_s']:.3f} | {kd} | {o['kda_seconds']:.3f} | {share_d} | {share_o} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
