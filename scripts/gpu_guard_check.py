"""Out-of-bounds write check of the CUDA KDA op: dst and the workspace sit inside poisoned guard
regions, the inputs are compared before/after; any byte written outside dst / workspace, or any
input changed, is reported. (compute-sanitizer only sees writes outside allocations; inside ggml's
one compute buffer a stray write silently corrupts a neighbour tensor.)

    python scripts/gpu_guard_check.py --lib build/ggml_ops/libkimi_kda.so
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kda_gpu", os.path.join(ROOT, "ggml_ops", "cuda", "kda_gpu.py"))
kg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kg)

G = 4096  # guard floats on each side
POISON = -7.25e30


def guarded(n):
    big = torch.full((n + 2 * G,), POISON, device="cuda")
    return big, big[G:G + n]


def guard_ok(big, n) -> bool:
    return bool((big[:G] == POISON).all()) and bool((big[G + n:] == POISON).all())


class Arena:
    """One poisoned allocation that holds every tensor of a case, 1 MiB apart: a stray write anywhere
    in it (not only next to dst) shows up as a changed poison float."""

    GAP = 1 << 18  # floats

    def __init__(self, sizes):
        self.offs, off = [], self.GAP
        for n in sizes:
            self.offs.append(off)
            off += (n + 3) // 4 * 4 + self.GAP
        self.buf = torch.full((off,), POISON, device="cuda")
        self.sizes = sizes

    def view(self, i):
        return self.buf[self.offs[i]:self.offs[i] + self.sizes[i]]

    def stray(self) -> int:
        mask = torch.ones_like(self.buf, dtype=torch.bool)
        for o, n in zip(self.offs, self.sizes):
            mask[o:o + n] = False
        return int((self.buf[mask] != POISON).sum())


def arena_case(lib, S, H, T, NS, K, algo, mm) -> list[str]:
    """Inputs, dst and workspace in one arena; inputs must be unchanged, poison untouched."""
    src = kg.inputs(NS, T, H, S, seed=T + S + NS + K)
    n = kg.dst_numel(NS, T, H, S, K)
    probe = torch.empty(n, device="cuda")
    p0, _ = kg.make_params(*src, probe, K=K, algo=algo)
    nws = max(lib.kimi_kda_cuda_workspace_bytes(kg.C.byref(p0)) // 4, 4)
    ar = Arena([a.numel() for a in src] + [n, nws])
    views = []
    for i, a in enumerate(src):
        v = ar.view(i).view(a.shape)
        v.copy_(a)
        views.append(v)
    p, keep = kg.make_params(*views, ar.view(6), K=K, algo=algo)
    kg.forward(lib, p, mm, ws=ar.view(7))
    torch.cuda.synchronize()
    why = []
    k = ar.stray()
    if k:
        why.append(f"{k} poison floats overwritten outside dst/workspace")
    for name, a, v in zip("q k v g beta s0".split(), src, views):
        if not torch.equal(a, v):
            why.append(f"input {name} changed")
    return why


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    args = ap.parse_args()
    lib = kg.load(args.lib)
    bad = 0
    n_cases = 0
    for S, H in ((32, 2), (128, 4)):
        for T in (1, 2, 16, 17, 31, 32, 48, 64, 100, 300):
            for NS in (1, 2):
                for K in (1, 2):
                    q, k, v, g, beta, s0 = kg.inputs(NS, T, H, S, seed=T * 7 + S + NS + K)
                    before = [a.clone() for a in (q, k, v, g, beta, s0)]
                    for algo in ("auto", "recurrent", "chunked"):
                        for mm in ("default", "tf32", "fp32"):
                            n = kg.dst_numel(NS, T, H, S, K)
                            big, dst = guarded(n)
                            p, keep = kg.make_params(q, k, v, g, beta, s0, dst, K=K, algo=algo)
                            nws = lib.kimi_kda_cuda_workspace_bytes(kg.C.byref(p)) // 4
                            wbig, ws = guarded(max(nws, 4))
                            kg.forward(lib, p, mm, ws=ws if nws else None)
                            torch.cuda.synchronize()
                            n_cases += 1
                            why = []
                            if not guard_ok(big, n):
                                idx = torch.nonzero(torch.cat([big[:G], big[G + n:]]) != POISON).flatten()
                                why.append(f"dst guard written ({idx.numel()} floats)")
                            if nws and not guard_ok(wbig, max(nws, 4)):
                                why.append("workspace guard written")
                            for name, a, b in zip("q k v g beta s0".split(), (q, k, v, g, beta, s0), before):
                                if not torch.equal(a, b):
                                    why.append(f"input {name} changed")
                            if why:
                                bad += 1
                                print(f"FAIL S={S} H={H} T={T} NS={NS} K={K} {algo} {mm}: {'; '.join(why)}", flush=True)
    # the bridge's shapes (tiny model: S_v 32, 2 heads; real: 128, 32) in one arena each
    for S, H in ((32, 2), (128, 32)):
        for T in (1, 16, 48, 512):
            for algo in ("auto", "recurrent"):
                why = arena_case(lib, S, H, T, 1, 1, algo, "default")
                n_cases += 1
                if why:
                    bad += 1
                    print(f"FAIL arena S={S} H={H} T={T} {algo}: {'; '.join(why)}", flush=True)
    print(f"guard check: {n_cases} cases, {bad} failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
