"""The layout glue of the CUDA checks (ggml_ops/cuda/kda_gpu.py: FLA arrays <-> ggml tensor
descriptions, permuted views, head/sequence broadcast, snapshot slots), exercised on the CPU op so CI
(no GPU) verifies it against python_ref float64: the GPU check relies on it being right."""
from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "build", "ggml_ops", "libkimi_kda.so")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gb():
    if not os.path.exists(LIB):
        pytest.skip("libkimi_kda.so not built (make ops)")
    return _load("kda_gpu_bench_glue", os.path.join(ROOT, "scripts", "gpu_bench.py"))


@pytest.mark.parametrize("T,S,NS,H,Hk,Bqk,K,permuted,init", [
    (17, 16, 3, 4, 2, 1, 3, True, True),
    (65, 64, 1, 2, 2, 1, 1, False, False),
    (5, 128, 3, 2, 1, 3, 3, True, True),
])
def test_glue_round_trip_through_cpu_op(gb, T, S, NS, H, Hk, Bqk, K, permuted, init):
    kg = gb.kg
    lib = kg.load(LIB)
    q, k, v, g, beta, s0 = kg.inputs(NS, T, H, S, Hk=Hk, Bqk=Bqk, seed=T * 7 + S, device="cpu", init_state=init)
    o_ref, st_ref = gb.reference(q, k, v, g, beta, s0, K)
    o, st = kg.split_dst(gb.run_cpu(lib, q, k, v, g, beta, s0, K, permuted), NS, T, H, S, K)
    assert kg.rel(o, o_ref) <= 1e-5
    for s in range(min(K, T)):
        assert kg.rel(st[s], st_ref[s]) <= 1e-5
    if T < K:
        assert torch.isnan(st[T:]).all()
