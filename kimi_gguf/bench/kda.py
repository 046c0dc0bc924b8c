"""`kimi-gguf bench kda --backend cpu [--json]`: the project's KDA op against llama.cpp's own
ggml_gated_delta_net, in one process, on the same ggml library and the same thread count.

Both run as one-node ggml graphs on a ggml thread pool (ours through ggml's custom-op API), over
the same inputs (H heads of S_v = 128, one sequence, model-like values), for several token counts:
T = 1 is decode, larger T is prefill. Printed: a table, then one JSON line with the ratios
(ours tokens/s over llama.cpp's). Measurements alternate between the two so that background load
hits both alike; each number is the best of --repeat batches."""
from __future__ import annotations

import numpy as np

from kimi_gguf.errors import KimiError

from ._common import json_line, machine, time_calls

TARGET = "kda"
HELP = "KDA op: ours vs llama.cpp's ggml_gated_delta_net (same ggml, same threads)"


def add_arguments(p) -> None:
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tokens", default="1,64,1024,8192", help="comma-separated T values")
    p.add_argument("--heads", type=int, default=32, help="H (v heads = q/k heads)")
    p.add_argument("--head-dim", type=int, default=128, help="S_v = S_k")
    p.add_argument("--threads", type=int, default=None, help="ggml threads (default: all cores)")
    p.add_argument("--algo", choices=["auto", "recurrent", "chunked"], default="auto")
    p.add_argument("--repeat", type=int, default=5, help="batches per measurement (best is kept)")
    p.add_argument("--min-time", type=float, default=0.25, help="seconds per batch")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--ggml-bench", default=None, metavar="EXE",
                   help="cuda: llama.cpp anchor timing program (scripts/ggml_gdn_bench.cpp, built by scripts/gpu_check.sh)")


def make_inputs(T: int, H: int, S: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f = np.float32
    q = rng.standard_normal((1, T, H, S)).astype(f)
    k = rng.standard_normal((1, T, H, S)).astype(f)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((1, T, H, S)).astype(f)
    g = (-1e-4 - (20 - 1e-4) * rng.uniform(0, 1, (1, T, H, S)) ** 3).astype(f)
    beta = rng.uniform(0, 1, (1, T, H, 1)).astype(f)
    state = (0.3 * rng.standard_normal((1, H, S, S))).astype(f)
    return q, k, v, g, beta, state


def bench_cpu(args) -> dict:
    from kimi_gguf.ggml_ops import kda

    nth = args.threads or kda.default_threads()
    rows = []
    for T in [int(x) for x in args.tokens.split(",") if x.strip()]:
        if T < 1:
            raise KimiError(f"bench kda: --tokens values must be >= 1, got {T}")
        inputs = make_inputs(T, args.heads, args.head_dim)
        ours_p = kda.Problem(*inputs, n_snapshots=1, algo=args.algo)
        ref_p = kda.Problem(*inputs, n_snapshots=1)
        ours, ref = kda.Graph(ours_p, "ggml", nth), kda.Graph(ref_p, "builtin", nth)
        ours.compute(1)
        ref.compute(1)
        a = np.concatenate([x.ravel() for x in ours_p.split()])
        b = np.concatenate([x.ravel() for x in ref_p.split()])
        err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        t_ours, t_ref = float("inf"), float("inf")
        for _ in range(max(1, args.repeat)):
            t_ref = min(t_ref, time_calls(ref.compute, args.min_time))
            t_ours = min(t_ours, time_calls(ours.compute, args.min_time))
        rows.append({
            "T": T, "algo": kda.resolve_algo(T, args.algo),
            "llama_ms": t_ref * 1e3, "ours_ms": t_ours * 1e3,
            "llama_tok_s": T / t_ref, "ours_tok_s": T / t_ours,
            "ratio": t_ref / t_ours, "max_rel_err": err,
        })
    return {"threads": nth, "isa": kda.cpu_isa(), "rows": rows}


def run(args) -> int:
    if args.backend != "cpu":
        try:
            from . import kda_cuda  # provided by the CUDA op's benchmark, when present
        except ImportError:
            raise KimiError("bench kda --backend cuda: no CUDA benchmark in this build") from None
        return kda_cuda.run(args)
    res = bench_cpu(args)
    summary = {
        "bench": "kda", "backend": "cpu", "H": args.heads, "S_v": args.head_dim, "n_seqs": 1,
        "threads": res["threads"], "isa": res["isa"], "machine": machine(),
        "anchor": "llama.cpp ggml_gated_delta_net (same libggml, same thread count)",
        "results": [{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()} for r in res["rows"]],
        "ratios": {str(r["T"]): round(r["ratio"], 3) for r in res["rows"]},
        "goal_met": {
            "decode_time_le_0.5x": all(r["ratio"] >= 2.0 for r in res["rows"] if r["T"] == 1),
            "prefill_ge_3x_at_T_ge_1024": all(r["ratio"] >= 3.0 for r in res["rows"] if r["T"] >= 1024),
        },
    }
    if not args.json:
        print(f"KDA op, CPU: H={args.heads} S_v={args.head_dim} n_seqs=1 threads={res['threads']} "
              f"isa={res['isa']} ({summary['machine']['cpu']})")
        print(f"{'T':>6} {'algo':>9} {'llama.cpp ms':>13} {'tok/s':>10} {'ours ms':>10} {'tok/s':>10} "
              f"{'speed-up':>9} {'max rel err':>11}")
        for r in res["rows"]:
            print(f"{r['T']:>6} {r['algo']:>9} {r['llama_ms']:>13.3f} {r['llama_tok_s']:>10.0f} "
                  f"{r['ours_ms']:>10.3f} {r['ours_tok_s']:>10.0f} {r['ratio']:>8.2f}x {r['max_rel_err']:>11.2e}")
    print(json_line(summary))
    return 0
