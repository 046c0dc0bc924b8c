"""Kimi Delta Attention (KDA) recurrence: the token-by-token form and the chunked WY/UT form.

FLA layout and semantics (flash-linear-attention's `naive_recurrent_kda` / `chunk_kda`):

    q, k : [B, T, H, K]     used as given (the caller l2-normalises them)
    v    : [B, T, H, V]
    g    : [B, T, H, K]     log-space per-step, per-key-channel decay (<= 0)
    beta : [B, T, H]
    initial_state : [B, H, K, V] or None (zeros)

Per token t (per batch b and head h; S is [K, V]):

    S   = diag(exp(g_t)) S
    S  += beta_t k_t (v_t - S^T k_t)^T
    o_t = scale * S^T q_t                      scale defaults to K**-0.5

Both functions return (o [B, T, H, V], final_state [B, H, K, V] or None) and run on NumPy arrays or
torch tensors (same code through python_ref.xp), computing in the dtype of q (float64 unless q is
float32). The naive form is the definition; the chunked form must equal it to rounding.
"""
from __future__ import annotations

from kimi_gguf.errors import KimiError

from .xp import XP, xp_of


def _prepare(q, k, v, g, beta, scale, initial_state):
    xp = xp_of(q)
    q, k, v, g, beta = (xp.asarray(a) for a in (q, k, v, g, beta))
    if q.ndim != 4:
        raise KimiError(f"kda: q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    expect = {"k": (k, (B, T, H, K)), "v": (v, (B, T, H, V)), "g": (g, (B, T, H, K)),
              "beta": (beta, (B, T, H))}
    for name, (a, shape) in expect.items():
        if tuple(a.shape) != shape:
            raise KimiError(f"kda: {name} has shape {tuple(a.shape)}, expected {shape}")
    if initial_state is None:
        S = xp.zeros((B, H, K, V))
    else:
        S = xp.copy(xp.asarray(initial_state))
        if tuple(S.shape) != (B, H, K, V):
            raise KimiError(f"kda: initial_state has shape {tuple(S.shape)}, expected {(B, H, K, V)}")
    scale = K ** -0.5 if scale is None else float(scale)
    # Work in [B, H, T, *] so the time axis sits next to the feature axes.
    q, k, v, g = (xp.swapaxes(a, 1, 2) for a in (q, k, v, g))
    beta = xp.swapaxes(beta, 1, 2)
    return xp, q, k, v, g, beta, S, scale


def naive_recurrent_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True):
    """The KDA recurrence token by token, vectorised over batch and heads (the definition)."""
    xp, q, k, v, g, beta, S, scale = _prepare(q, k, v, g, beta, scale, initial_state)
    T = q.shape[2]
    outs = []
    for t in range(T):
        S = S * xp.exp(g[:, :, t])[..., None]                          # decay rows (key channels)
        kt = k[:, :, t]                                                 # [B, H, K]
        pred = (kt[:, :, None, :] @ S)[:, :, 0]                         # S^T k   [B, H, V]
        delta = beta[:, :, t, None] * (v[:, :, t] - pred)               # beta (v - S^T k)
        S = S + kt[..., :, None] * delta[..., None, :]                  # rank-1 update
        outs.append(scale * (q[:, :, t, None, :] @ S)[:, :, 0])         # scale * S^T q
    o = xp.stack(outs, axis=1) if outs else xp.zeros((q.shape[0], 0, q.shape[1], v.shape[-1]))
    return o, (S if output_final_state else None)


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
              chunk_size=64):
    """The same function as `naive_recurrent_kda`, computed one chunk of `chunk_size` tokens at a time.

    Within a chunk (tokens 1..n, start state S0) let G_t = g_1 + ... + g_t (per key channel). The
    state after token t has the WY form

        S_t = diag(exp(G_t)) S0 + sum_{i<=t} diag(exp(G_t - G_i)) k_i u_i^T

    where the "pseudo values" u solve a unit lower-triangular system (the UT transform):

        u_t + beta_t sum_{i<t} A_ti u_i = beta_t (v_t - S0^T (exp(G_t) * k_t)),
        A_ti = sum_d k_t[d] k_i[d] exp(G_t[d] - G_i[d]).

    Outputs and the chunk's final state then follow from matrix products, with one state update
    per chunk. Numerical range: every exponent is a difference of cumulative log-gates taken in
    the order that makes it <= 0 -- G_t - G_i with i <= t (masked to -inf above the diagonal
    *before* exp), G_t relative to the chunk start, G_n - G_i relative to the chunk end -- so no
    factor exceeds 1 and nothing overflows even with g = -20 per step; a tiny decay underflows to 0
    only where its true contribution is below double precision anyway.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise KimiError(f"kda: chunk_size must be a positive integer, got {chunk_size!r}")
    xp, q, k, v, g, beta, S, scale = _prepare(q, k, v, g, beta, scale, initial_state)
    B, H, T, K = q.shape
    V = v.shape[-1]
    outs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        o_c, S = _chunk_step(xp, q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                             g[:, :, start:end], beta[:, :, start:end], S, scale)
        outs.append(o_c)
    o = xp.concat(outs, axis=2) if outs else xp.zeros((B, H, 0, V))
    return xp.swapaxes(o, 1, 2), (S if output_final_state else None)


def _chunk_step(xp: XP, q, k, v, g, beta, S0, scale):
    """One chunk ([B, H, n, *] slices): returns (o [B, H, n, V], state after the chunk)."""
    n = q.shape[2]
    G = xp.cumsum(g, axis=2)                                           # [B, H, n, K], <= 0
    A_qk, A_kk = _intra_chunk_scores(xp, q, k, G)
    L = xp.where(xp.tril_mask(n, -1), A_kk * beta[..., None], 0.0)     # strictly lower
    eG = xp.exp(G)
    # UT transform: solve (I + L) [U | W] = [beta v | beta exp(G) k] by forward substitution.
    rhs = xp.concat([beta[..., None] * v, beta[..., None] * (eG * k)], axis=-1)
    X = xp.copy(rhs)
    for t in range(1, n):
        X[:, :, t] = rhs[:, :, t] - (L[:, :, t, None, :t] @ X[:, :, :t])[:, :, 0]
    V = v.shape[-1]
    U, W = X[..., :V], X[..., V:]
    u = U - W @ S0                                                     # pseudo values incl. S0
    o = scale * ((eG * q) @ S0 + A_qk @ u)
    G_end = G[:, :, n - 1]                                             # [B, H, K]
    k_to_end = k * xp.exp(G_end[:, :, None, :] - G)                    # exp(G_n - G_i) <= 1
    S = xp.exp(G_end)[..., None] * S0 + xp.swapaxes(k_to_end, -1, -2) @ u
    return o, S


SUB = 16  # sub-block size for the intra-chunk scores


def _intra_chunk_scores(xp: XP, q, k, G):
    """A_qk[t, i] = sum_d q_t[d] k_i[d] exp(G_t[d] - G_i[d]) for i <= t (0 above), and A_kk alike.

    Done FLA-style in sub-blocks of SUB tokens: for a row block J and an earlier column block the
    decay factorises through the reference point r = first token of J (i < r <= t), as
    (x_t exp(G_t - G_r)) . (k_i exp(G_r - G_i)) -- a matrix product with both factors <= 1. Inside
    the diagonal block the decays are formed pairwise, masked to -inf above the diagonal before exp.
    """
    B, H, n, K = q.shape
    A_qk, A_kk = xp.zeros((B, H, n, n)), xp.zeros((B, H, n, n))
    for j0 in range(0, n, SUB):
        j1 = min(j0 + SUB, n)
        Gj = G[:, :, j0:j1]
        if j0 > 0:
            ref = G[:, :, j0, None, :]                                 # [B, H, 1, K]
            to_ref = xp.exp(Gj - ref)                                  # t >= r
            k_prev = xp.swapaxes(k[:, :, :j0] * xp.exp(ref - G[:, :, :j0]), -1, -2)  # i < r
            A_qk[:, :, j0:j1, :j0] = (q[:, :, j0:j1] * to_ref) @ k_prev
            A_kk[:, :, j0:j1, :j0] = (k[:, :, j0:j1] * to_ref) @ k_prev
        m = j1 - j0
        diff = Gj[:, :, :, None, :] - Gj[:, :, None, :, :]             # G_t - G_i  [B, H, t, i, K]
        decay = xp.exp(xp.where(xp.tril_mask(m)[:, :, None], diff, -float("inf")))
        kd = decay * k[:, :, None, j0:j1, :]
        A_qk[:, :, j0:j1, j0:j1] = xp.sum(q[:, :, j0:j1, None, :] * kd, axis=-1)
        A_kk[:, :, j0:j1, j0:j1] = xp.sum(k[:, :, j0:j1, None, :] * kd, axis=-1)
    return A_qk, A_kk
