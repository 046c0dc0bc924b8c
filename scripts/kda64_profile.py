"""Phase profile of the CUDA KDA 64-token 16-bit path (A/B knobs of kda_cuda.cu) at H=32, S=128, B=1.

  python scripts/kda64_profile.py --lib /tmp/kda-build/libkimi_kda_gpu.so [--T 8192] [--json OUT]

Times (CUDA-graph replays, events, median us per call): the whole op per math mode, each kernel alone
(KIMI_KDA_CUDA_PROFILE=prep|state), the v7 prep kernel stopped after phase n
(KIMI_KDA_CUDA_PREP_STOP=n, output invalid) and the A/B knobs. T > 8192: the whole op only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kda_gpu", os.path.join(ROOT, "ggml_ops", "cuda", "kda_gpu.py"))
kg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--T", type=int, nargs="+", default=[8192])
    ap.add_argument("--json", default=None)
    ap.add_argument("--once", default=None, help="run this math mode once per T (for ncu) and exit")
    a = ap.parse_args()
    lib = kg.load(a.lib)
    H, S, B = 32, 128, 1
    out = []
    for T in a.T:
        q, k, v, g, beta, s0 = kg.inputs(B, T, H, S, seed=T)
        dst = torch.empty(kg.dst_numel(B, T, H, S, 1), device="cuda")
        p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=1, algo="auto")
        ws = kg.workspace(lib, p)
        if a.once:
            kg.forward(lib, p, a.once, ws=ws)
            torch.cuda.synchronize()
            continue
        runs = [("bf16", {}), ("f16", {})]
        if T <= 8192:
            runs += [("tf32", {}), ("f16", {"PROFILE": "state"}), ("f16", {"PROFILE": "prep"})]
            runs += [("f16", {"PROFILE": "prep", "PREP_STOP": str(stop)}) for stop in range(1, 7)]
            runs += [("f16", {"STATE_NS": "2"}), ("f16", {"PROFILE": "state", "STATE_NS": "2"}),
                     ("f16", {"PROFILE": "prep", "PREP7_DELAY": "8000"}), ("f16", {"PROFILE": "prep", "PREP7_PERSIST": "1"})]
        for mm, env in runs:
            envf = {"KIMI_KDA_CUDA_" + kk: vv for kk, vv in env.items()}
            os.environ.update(envf)
            us = kg.time_graph(lambda: kg.forward(lib, p, mm, ws=ws), 2 if T >= 8192 else 10)
            for kk in envf:
                os.environ.pop(kk, None)
            tag = mm + "".join(f" {kk}={vv}" for kk, vv in env.items())
            out.append({"T": T, "run": tag, "us": us})
            print(f"T={T:6d} {tag:45s} {us:9.1f} us", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
