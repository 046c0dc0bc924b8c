"""The CPU KDA op (libkimi_kda.so) against the float64 reference and llama.cpp's own op.

Issue 4's grid: T x S_v x n_seqs x initial state x layout, relative error <= 1e-5 against
python_ref's naive recurrence (float64); equality with llama.cpp's ggml_gated_delta_net on the same
ggml library; chunked == token-by-token; graph node == C API; snapshot slots; every SIMD flavour.
"""
from __future__ import annotations

import numpy as np
import pytest

from kimi_gguf.ggml_ops import kda
from kimi_gguf.ggml_ops._binding import KdaOpError
from kimi_gguf.python_ref.kda import naive_recurrent_kda

TOL = 1e-5
H = 2


def rel(a, b):
    """Max-abs error relative to the reference's max magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def inputs(seed, B, T, Hv, S, Hk=None, init=True):
    """Model-like FLA-layout inputs (float64): unit-norm q, k; log-gates in [-20, -1e-4]
    (mostly mild, a heavy tail of strong decay); beta in [0, 1]."""
    rng = np.random.default_rng(seed)
    Hk = Hk or Hv
    q = rng.standard_normal((B, T, Hk, S))
    k = rng.standard_normal((B, T, Hk, S))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, Hv, S))
    g = -1e-4 - (20 - 1e-4) * rng.uniform(0, 1, (B, T, Hv, S)) ** 3
    beta = rng.uniform(0, 1, (B, T, Hv))
    s0 = 0.3 * rng.standard_normal((B, Hv, S, S)) if init else None
    return q, k, v, g, beta, s0


def permuted(a):
    """The same values in a [B, H, T, ...]-ordered buffer, viewed as [B, T, H, ...] (strided)."""
    buf = np.ascontiguousarray(np.swapaxes(a, 1, 2))
    view = np.swapaxes(buf, 1, 2)
    assert min(a.shape[1], a.shape[2]) == 1 or not view.flags.c_contiguous
    return view


def run_ggml_layout(q, k, v, g, beta, s0, layout, algo, K=1, impl="c", n_threads=None):
    """FLA arrays -> op in ggml layout (contiguous or permuted views) -> (o FLA, states FLA)."""
    q, k, v, g, beta, state = kda.fla_to_ggml(q, k, v, g, beta, None, s0)
    if layout == "permuted":
        q, k, v, g, beta = (permuted(x) for x in (q, k, v, g, beta))
        # state: heads and sequences swapped in memory
        state = np.swapaxes(np.ascontiguousarray(np.swapaxes(state, 0, 1)), 0, 1)
    attn, states = kda.kda_ggml(q, k, v, g, beta, state, n_snapshots=K, algo=algo, impl=impl,
                                n_threads=n_threads)
    return attn, np.swapaxes(states, -1, -2)


_ref_cache: dict = {}


def reference(key, q, k, v, g, beta, s0):
    if key not in _ref_cache:
        _ref_cache.clear()
        _ref_cache[key] = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    return _ref_cache[key]


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("n_seqs", [1, 3])
@pytest.mark.parametrize("S", [16, 64, 128])
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 63, 64, 65, 1000])
def test_matches_float64_reference(T, S, n_seqs, init, layout):
    seed = hash((T, S, n_seqs, init)) % 2**32
    q, k, v, g, beta, s0 = inputs(seed, n_seqs, T, H, S, init=init)
    o_ref, s_ref = reference((T, S, n_seqs, init), q, k, v, g, beta, s0)
    for algo in ("recurrent", "chunked"):
        o, states = run_ggml_layout(q, k, v, g, beta, s0, layout, algo)
        assert rel(o, o_ref) <= TOL, (algo, rel(o, o_ref))
        assert rel(states[0], s_ref) <= TOL, (algo, rel(states[0], s_ref))


@pytest.mark.parametrize("T,K", [(1, 1), (5, 1), (70, 1), (3, 4), (10, 4), (100, 3), (64, 65)])
@pytest.mark.parametrize("Hk,n_seqs_qk", [(2, 2), (1, 2), (2, 1)])
def test_equals_llama_cpp_builtin(T, K, Hk, n_seqs_qk):
    """Ours (C API and graph node, both algorithms) == ggml_gated_delta_net, snapshots included;
    head broadcast (H_k < H_v, tiled) and sequence broadcast (n_seqs_qk < n_seqs)."""
    S, Hv, B = 32, 4, 2
    q, k, v, g, beta, s0 = inputs(T * 31 + K, B, T, Hv, S, Hk=Hk)
    args = kda.fla_to_ggml(q[:n_seqs_qk], k[:n_seqs_qk], v, g, beta, None, s0)
    n = S * Hv * T * B + K * S * S * Hv * B
    ref_dst = np.full(n, 7.0, np.float32)
    ref = kda.Problem(*args, n_snapshots=K, dst=ref_dst)
    ref_attn, ref_states = ref.run("builtin", n_threads=2)
    for impl in ("c", "ggml"):
        for algo in ("recurrent", "chunked", "auto"):
            prob = kda.Problem(*args, n_snapshots=K, algo=algo, dst=np.full(n, 7.0, np.float32))
            attn, states = prob.run(impl, n_threads=3)
            assert rel(attn, ref_attn) <= TOL, (impl, algo)
            written = min(K, T)
            assert rel(states[:written], ref_states[:written]) <= TOL, (impl, algo)
            # slots the op does not write (T < K) keep the caller's contents, as in llama.cpp
            assert np.all(states[written:] == 7.0)


def test_builtin_matches_reference_too():
    """Anchor sanity: llama.cpp's op itself agrees with the float64 reference (same semantics)."""
    q, k, v, g, beta, s0 = inputs(5, 2, 40, H, 64)
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    o, states = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", "auto", impl="builtin")
    assert rel(o, o_ref) <= TOL and rel(states[0], s_ref) <= TOL


def test_snapshots_are_prefix_states():
    """Slot s holds the state after token T-1-s: the final state of the first T-s tokens."""
    T, K, S = 12, 5, 32
    q, k, v, g, beta, s0 = inputs(11, 1, T, H, S)
    for algo in ("recurrent", "chunked"):
        _, states = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo, K=K)
        for s in range(K):
            n = T - s
            _, s_ref = naive_recurrent_kda(q[:, :n], k[:, :n], v[:, :n], g[:, :n], beta[:, :n],
                                           initial_state=s0)
            assert rel(states[s], s_ref) <= TOL, (algo, s)


@pytest.mark.parametrize("T", [1, 7, 64, 200])
def test_chunked_equals_recurrent_and_node_equals_c_api(T):
    q, k, v, g, beta, s0 = inputs(T, 2, T, 3, 64)
    o_rec, st_rec = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", "recurrent", K=2)
    o_chk, st_chk = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", "chunked", K=2)
    assert rel(o_chk, o_rec) <= TOL and rel(st_chk, st_rec) <= TOL
    for algo in ("recurrent", "chunked"):
        o_c, st_c = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo, K=2, impl="c", n_threads=2)
        o_n, st_n = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo, K=2, impl="ggml", n_threads=2)
        # the same kernels on the same work split: bit-identical
        np.testing.assert_array_equal(o_n, o_c)
        np.testing.assert_array_equal(st_n, st_c)


def test_thread_counts_agree():
    """1, 2, 3, 7 and 64 threads (column blocks differ) give identical results."""
    q, k, v, g, beta, s0 = inputs(3, 1, 50, 3, 64)
    for algo in ("recurrent", "chunked"):
        base = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo, n_threads=1)
        for nth in (2, 3, 7, 64):
            out = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo, n_threads=nth)
            np.testing.assert_array_equal(out[0], base[0])
            np.testing.assert_array_equal(out[1], base[1])


def test_every_simd_flavour():
    """The generic (portable), AVX2 and AVX-512 kernels all match the reference."""
    cases = []
    for T in (5, 70):  # short runs use the ggml-layout kernel, longer ones the scan
        q, k, v, g, beta, s0 = inputs(9 + T, 2, T, H, 48)
        cases.append(((q, k, v, g, beta, s0), naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)))
    tried = []
    try:
        for isa in ("generic", "avx2", "avx512"):
            try:
                kda.force_isa(isa)
            except Exception:
                continue  # not built for / not supported by this CPU
            tried.append(isa)
            for args, (o_ref, s_ref) in cases:
                for algo in ("recurrent", "chunked"):
                    o, st = run_ggml_layout(*args, "permuted", algo)
                    assert rel(o, o_ref) <= TOL and rel(st[0], s_ref) <= TOL, (isa, algo)
    finally:
        kda.force_isa(None)
    assert "generic" in tried


def test_fla_front_end_scale_and_shapes():
    q, k, v, g, beta, s0 = inputs(4, 1, 9, H, 32)
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta, scale=0.3, initial_state=s0)
    o, s = kda.kda_fla(q, k, v, g, beta, scale=0.3, initial_state=s0)
    assert rel(o, o_ref) <= TOL and rel(s, s_ref) <= TOL
    with pytest.raises(Exception, match="K == V"):
        kda.kda_fla(q, k, np.zeros((1, 9, H, 16)), g, beta)


def test_bad_input_is_an_error_not_a_crash():
    q, k, v, g, beta, s0 = kda.fla_to_ggml(*inputs(1, 1, 4, H, 32)[:5], None, None)
    with pytest.raises(KdaOpError, match="S_v = 24") as e:
        kda.kda_ggml(q[..., :24], k[..., :24], v[..., :24], g[..., :24], beta,
                     np.zeros((1, H, 24, 24), np.float32))
    assert e.value.code == 2
    with pytest.raises(KdaOpError, match="n_snapshots") as e:
        kda.kda_ggml(q, k, v, g, beta, s0, n_snapshots=0)
    with pytest.raises(KdaOpError, match="g: shape"):
        kda.kda_ggml(q, k, v, g[:, :3], beta, s0)


# --- kimi-gguf kda-eval ---------------------------------------------------------------------
def test_kda_eval_cli_matches_reference(tmp_path):
    from kimi_gguf.cli import main

    q, k, v, g, beta, s0 = inputs(21, 2, 33, 3, 32)
    src, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, q=q, k=k, v=v, g=g, beta=beta, initial_state=s0, scale=np.float64(0.25))
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta, scale=0.25, initial_state=s0)
    for algo in ("auto", "recurrent", "chunked"):
        assert main(["kda-eval", str(src), str(out), "--algo", algo, "--threads", "2"]) == 0
        with np.load(out) as z:
            assert sorted(z.files) == ["final_state", "o"]
            assert rel(z["o"], o_ref) <= TOL and rel(z["final_state"], s_ref) <= TOL


def test_kda_eval_cli_errors_leave_no_output(tmp_path, capsys):
    from kimi_gguf.cli import main

    q, k, v, g, beta, _ = inputs(22, 1, 5, 2, 16)
    out = tmp_path / "out.npz"
    cases = {
        "missing.npz": None,
        "nobeta.npz": dict(q=q, k=k, v=v, g=g),
        "extra.npz": dict(q=q, k=k, v=v, g=g, beta=beta, bogus=q),
        "badshape.npz": dict(q=q, k=k, v=v, g=g[:, :4], beta=beta),
        "nan.npz": dict(q=q, k=k, v=v * np.nan, g=g, beta=beta),
        "headdim.npz": dict(q=q[..., :8], k=k[..., :8], v=v, g=g, beta=beta),
    }
    for name, arrays in cases.items():
        src = tmp_path / name
        if arrays is not None:
            np.savez(src, **arrays)
        assert main(["kda-eval", str(src), str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and name in err and "\n" not in err, err
        assert not out.exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["kda-eval", str(tmp_path / "junk.npz"), str(out)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))


@pytest.mark.parametrize("T", [3, 40, 300])
def test_extreme_gates(T):
    """Gates far outside the usual range: exp(g) underflowing to 0 (g = -200), just above the
    float range (g = -90), and almost no decay (g = -1e-7) -- the scan's row renormalisation and
    the vectorised exp must still match the reference."""
    q, k, v, g, beta, s0 = inputs(T + 5, 2, T, H, 64)
    rng = np.random.default_rng(T)
    g = rng.choice([-200.0, -90.0, -30.0, -1e-7, -1e-3], size=g.shape, p=[0.05, 0.05, 0.1, 0.4, 0.4])
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    for algo in ("recurrent", "chunked"):
        o, st = run_ggml_layout(q, k, v, g, beta, s0, "contiguous", algo)
        assert np.all(np.isfinite(o)) and np.all(np.isfinite(st))
        assert rel(o, o_ref) <= TOL and rel(st[0], s_ref) <= TOL, (algo, rel(o, o_ref), rel(st[0], s_ref))
