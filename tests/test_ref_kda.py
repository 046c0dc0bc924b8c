"""python_ref KDA: the chunked WY/UT form equals the token-by-token definition, and both backends agree.

The token-by-token form is checked against a plain per-head loop written out here from the
recurrence's definition (no vectorisation), so the reference itself is tested by something
independent of it.
"""
import numpy as np
import pytest

from kimi_gguf.errors import KimiError
from kimi_gguf.python_ref.kda import chunk_kda, naive_recurrent_kda


def model_like(seed, B, T, H, K, V, g_low=-20.0):
    """Inputs shaped like the model's: l2-normalised q, k; log-gates in [g_low, -1e-4]; beta in [0, 1]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, T, H, K))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V))
    g = -np.exp(rng.uniform(np.log(1e-4), np.log(-g_low), (B, T, H, K)))
    beta = rng.uniform(0.0, 1.0, (B, T, H))
    s0 = rng.standard_normal((B, H, K, V)) * 0.5
    return q, k, v, g, beta, s0


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300))


def loop_reference(q, k, v, g, beta, scale, s0):
    """The recurrence written out per batch, head and token (slow, obvious)."""
    B, T, H, K = q.shape
    o = np.zeros(v.shape)
    S_out = np.zeros(s0.shape)
    for b in range(B):
        for h in range(H):
            S = s0[b, h].copy()
            for t in range(T):
                S = np.exp(g[b, t, h])[:, None] * S
                S = S + beta[b, t, h] * np.outer(k[b, t, h], v[b, t, h] - S.T @ k[b, t, h])
                o[b, t, h] = scale * (S.T @ q[b, t, h])
            S_out[b, h] = S
    return o, S_out


def test_naive_matches_written_out_loop():
    q, k, v, g, beta, s0 = model_like(1, 2, 19, 3, 8, 6)
    o, S = naive_recurrent_kda(q, k, v, g, beta, scale=0.3, initial_state=s0)
    o_ref, S_ref = loop_reference(q, k, v, g, beta, 0.3, s0)
    assert rel(o, o_ref) < 1e-13 and rel(S, S_ref) < 1e-13
    # default scale is K^-0.5 and the default state is zeros
    o2, _ = naive_recurrent_kda(q, k, v, g, beta)
    o2_ref, _ = loop_reference(q, k, v, g, beta, 8 ** -0.5, np.zeros_like(s0))
    assert rel(o2, o2_ref) < 1e-13


@pytest.mark.parametrize("C", [1, 16, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_equals_naive(C, with_state):
    for i, T in enumerate(sorted({1, 2, max(C - 1, 1), C, C + 1, 3 * C + 5})):
        q, k, v, g, beta, s0 = model_like(100 * C + 10 * i + with_state, 2, T, 3, 16, 12)
        s0 = s0 if with_state else None
        o_n, S_n = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
        o_c, S_c = chunk_kda(q, k, v, g, beta, initial_state=s0, chunk_size=C)
        assert o_c.shape == (2, T, 3, 12) and S_c.shape == (2, 3, 16, 12)
        assert rel(o_c, o_n) <= 1e-12, (C, T)
        assert rel(S_c, S_n) <= 1e-12, (C, T)


def test_chunk_real_geometry_and_extreme_gates():
    # head dim 128 as in the model; gates down to -20 per step make cumulative decays underflow
    # exp() many times over inside a chunk of 64 -- the chunked form must stay finite and exact.
    q, k, v, g, beta, s0 = model_like(7, 1, 150, 2, 128, 128, g_low=-20.0)
    g[:, 40:80] = -20.0
    o_n, S_n = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    o_c, S_c = chunk_kda(q, k, v, g, beta, initial_state=s0, chunk_size=64)
    assert np.isfinite(o_c).all() and np.isfinite(S_c).all()
    assert rel(o_c, o_n) <= 1e-12 and rel(S_c, S_n) <= 1e-12


def test_state_carried_across_calls():
    q, k, v, g, beta, s0 = model_like(3, 1, 70, 2, 16, 16)
    o_full, S_full = chunk_kda(q, k, v, g, beta, initial_state=s0, chunk_size=16)
    o1, S1 = chunk_kda(q[:, :33], k[:, :33], v[:, :33], g[:, :33], beta[:, :33], initial_state=s0, chunk_size=16)
    o2, S2 = naive_recurrent_kda(q[:, 33:], k[:, 33:], v[:, 33:], g[:, 33:], beta[:, 33:], initial_state=S1)
    assert rel(np.concatenate([o1, o2], axis=1), o_full) < 1e-12 and rel(S2, S_full) < 1e-12
    _, none_state = chunk_kda(q, k, v, g, beta, output_final_state=False)
    assert none_state is None


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip("torch")
    q, k, v, g, beta, s0 = model_like(5, 2, 45, 2, 32, 16)
    o_n, S_n = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    t64 = [torch.from_numpy(a) for a in (q, k, v, g, beta, s0)]
    for fn in (naive_recurrent_kda, lambda *a, **kw: chunk_kda(*a, chunk_size=16, **kw)):
        o_t, S_t = fn(*t64[:5], initial_state=t64[5])
        assert isinstance(o_t, torch.Tensor) and o_t.dtype == torch.float64
        assert rel(o_t.numpy(), o_n) < 1e-12 and rel(S_t.numpy(), S_n) < 1e-12
        t32 = [a.float() for a in t64]
        o_32, S_32 = fn(*t32[:5], initial_state=t32[5])
        assert o_32.dtype == torch.float32
        assert rel(o_32.numpy(), o_n) < 1e-4 and rel(S_32.numpy(), S_n) < 1e-4


def test_bad_shapes_raise():
    q, k, v, g, beta, s0 = model_like(9, 1, 5, 2, 8, 8)
    with pytest.raises(KimiError, match="beta"):
        naive_recurrent_kda(q, k, v, g, beta[:, :, :1])
    with pytest.raises(KimiError, match="initial_state"):
        chunk_kda(q, k, v, g, beta, initial_state=s0[:, :1])
    with pytest.raises(KimiError, match="chunk_size"):
        chunk_kda(q, k, v, g, beta, chunk_size=0)
