"""A/B of the v8 overlapped segments of the CUDA KDA 64-token 16-bit path (H=32, S=128, B=1).

  python scripts/kda64_overlap.py --lib libkimi_kda_gpu.so [--T 8192 32768] [--json OUT]

Times (CUDA-graph replays, events, median us per call, as scripts/kda64_profile.py) the whole op with
$KIMI_KDA_CUDA_OVL = 0 (the v7 sequence: prep then state per workspace segment) and with the
overlap at several segment counts / knobs, all in one process; and checks that every overlapped
variant's output and final state are bitwise equal to the sequential one (same arithmetic).
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
    ap.add_argument("--T", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--json", default=None)
    ap.add_argument("--H", type=int, default=32, help="heads (4 state CTAs per head)")
    ap.add_argument("--runs", default=None, help="';'-separated 'mode[,KNOB=v...]' to time instead of the default list")
    a = ap.parse_args()
    lib = kg.load(a.lib)
    H, S, B = a.H, 128, 1
    out = []
    if a.runs:
        runs = []
        for r in a.runs.split(";"):
            parts = r.split(",")
            runs.append((parts[0], {kv.split("=")[0]: kv.split("=")[1] for kv in parts[1:]}))
    else:
        runs = [("f16", {"OVL": "0"}), ("f16", {"OVL": "2"}), ("f16", {"OVL": "4"}), ("f16", {"OVL": "8"}),
                ("f16", {"OVL": "4", "STATE_NS": "2"}), ("f16", {"OVL": "4", "OVL_PRIO": "0"}),
                ("bf16", {"OVL": "0"}), ("bf16", {"OVL": "4"}),
                ("f16", {"OVL": "0", "PROFILE": "state"}), ("f16", {"OVL": "0", "PROFILE": "state", "STATE_NS": "2"}),
                ("f16", {"OVL": "0", "PROFILE": "prep"}), ("f16", {"OVL": "0"})]
    for T in a.T:
        q, k, v, g, beta, s0 = kg.inputs(B, T, H, S, seed=T)
        dst = torch.empty(kg.dst_numel(B, T, H, S, 1), device="cuda")
        p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=1, algo="auto")
        ws = kg.workspace(lib, p)
        ref = {}
        for mm, env in runs:
            envf = {"KIMI_KDA_CUDA_" + kk: vv for kk, vv in env.items()}
            os.environ.update(envf)
            same = None
            if "PROFILE" not in env:  # bitwise comparison against the sequential result of this mode
                dst.fill_(float("nan"))
                kg.forward(lib, p, mm, ws=ws)
                torch.cuda.synchronize()
                if env.get("OVL", "0") in ("0", "1") and not env.get("STATE_NS") and mm not in ref:
                    ref[mm] = dst.clone()
                if mm in ref:
                    same = bool(torch.equal(dst, ref[mm]))
            us = kg.time_graph(lambda: kg.forward(lib, p, mm, ws=ws), 2 if T >= 8192 else 10)
            for kk in envf:
                os.environ.pop(kk, None)
            tag = mm + "".join(f" {kk}={vv}" for kk, vv in env.items())
            out.append({"T": T, "run": tag, "us": us, "bitwise_equal_to_seq": same})
            print(f"T={T:6d} {tag:45s} {us:9.1f} us  same={same}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
