"""`kimi-gguf bench kda --backend cuda [--json] [--ggml-bench EXE]`: the CUDA KDA op on this machine's
GPU, H heads of S_v = 128, one sequence, T in --tokens: median microseconds per call (CUDA-graph
replays timed with events), per math mode of the chunked path (3xtf32 = the default, tf32, fp32, and
f16 = the 64-token 16-bit fast path, KIMI_KDA_CUDA_MATH_F16). llama.cpp's CUDA GATED_DELTA_NET is
the anchor when --ggml-bench names the timing program scripts/gpu_check.sh builds
(scripts/ggml_gdn_bench.cpp against ggml with CUDA); the pip llama-cpp-python has no CUDA backend.
Printed: a table, then one JSON line with the ratios (llama.cpp time over ours)."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from kimi_gguf.errors import KimiError

from ._common import json_line

_GLUE = Path(__file__).resolve().parents[2] / "ggml_ops" / "cuda" / "kda_gpu.py"


def _glue():
    spec = importlib.util.spec_from_file_location("kimi_kda_gpu_glue", _GLUE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _anchor(exe: str, Ts) -> dict:
    try:
        out = subprocess.run([exe, *map(str, Ts)], capture_output=True, text=True, timeout=600, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KimiError(f"bench kda --backend cuda: --ggml-bench {exe}: {exc}") from None
    res = {}
    for line in out.splitlines():
        if line.startswith("ggml T="):
            f = dict(x.split("=", 1) for x in line.split()[1:])
            res[int(f["T"])] = {"graph_us": float(f["graph_us"]), "op_us": float(f["op_us"])}
    return res


def run(args) -> int:
    try:
        import torch
    except ImportError:
        raise KimiError("bench kda --backend cuda: needs torch with CUDA") from None
    if not torch.cuda.is_available():
        raise KimiError("bench kda --backend cuda: no CUDA device visible to torch")
    from kimi_gguf.ggml_ops._binding import library_path

    kg = _glue()
    lib = kg.load(str(library_path()))
    if not lib.kimi_kda_has_cuda():
        raise KimiError(f"bench kda --backend cuda: {library_path()} was built without CUDA")
    Ts = [int(x) for x in args.tokens.split(",") if x.strip()]
    if any(T < 1 for T in Ts):
        raise KimiError("bench kda: --tokens values must be >= 1")
    H, S = args.heads, args.head_dim
    anchor = _anchor(args.ggml_bench, Ts) if getattr(args, "ggml_bench", None) else {}
    rows = []
    for T in Ts:
        q, k, v, g, beta, s0 = kg.inputs(1, T, H, S, seed=T)
        dst = torch.empty(kg.dst_numel(1, T, H, S, 1), device="cuda")
        p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=1, algo=args.algo)
        ws = kg.workspace(lib, p)
        n_inner = 100 if T <= 64 else (10 if T <= 1024 else 2)
        row = {"T": T}
        for mm in (("tf32x3", "tf32", "fp32", "f16") if T > 1 else ("default",)):
            row[f"ours_{mm}_us"] = kg.time_graph(lambda: kg.forward(lib, p, mm, ws=ws), n_inner)
        if T in anchor:
            row["llama_op_us"] = anchor[T]["op_us"]
            row["llama_graph_us"] = anchor[T]["graph_us"]
            best = row.get("ours_tf32x3_us", row.get("ours_default_us"))
            row["ratio"] = row["llama_op_us"] / best
            if "ours_f16_us" in row:  # the fast 16-bit path (<= 3e-3 bar, S_v = 128)
                row["ratio_f16"] = row["llama_op_us"] / row["ours_f16_us"]
        rows.append(row)
    summary = {"bench": "kda", "backend": "cuda", "device": torch.cuda.get_device_name(), "H": H, "S_v": S,
               "n_seqs": 1, "anchor": "llama.cpp GATED_DELTA_NET (CUDA), per-op time" if anchor else None,
               "results": [{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
               "ratios": {str(r["T"]): round(r["ratio"], 3) for r in rows if "ratio" in r},
               "ratios_f16": {str(r["T"]): round(r["ratio_f16"], 3) for r in rows if "ratio_f16" in r}}
    if not args.json:
        print(f"KDA op, CUDA: {summary['device']} H={H} S_v={S} n_seqs=1 (us per call, median)")
        print(f"{'T':>6} {'ours 3xtf32':>12} {'ours tf32':>10} {'ours fp32':>10} {'ours f16':>10} {'llama.cpp':>10} {'speed-up':>9}"
              f" {'f16 speed-up':>12}")
        for r in rows:
            f = lambda key: f"{r[key]:.2f}" if key in r else "-"  # noqa: E731
            first = f("ours_tf32x3_us") if "ours_tf32x3_us" in r else f("ours_default_us")
            print(f"{r['T']:>6} {first:>12} {f('ours_tf32_us'):>10} {f('ours_fp32_us'):>10} {f('ours_f16_us'):>10} {f('llama_op_us'):>10} "
                  f"{(str(round(r['ratio'], 2)) + 'x') if 'ratio' in r else '-':>9}"
                  f" {(str(round(r['ratio_f16'], 2)) + 'x') if 'ratio_f16' in r else '-':>12}")
    print(json_line(summary))
    return 0
