"""The KDA (Kimi Delta Attention) block: projections, short conv, gates, the recurrence, gated norm.

For one sequence: x [T, hidden] -> [T, hidden], carrying a KDAState (conv inputs and the recurrent
state) across calls so prefill + step-by-step decoding equals one full forward.

    q, k, v = silu(causal_conv(x W{q,k,v}^T))            separate depthwise convs, kernel K
    g       = -exp(A_log[h]) * softplus(f_b(f_a(x)) + dt_bias)      [T, H, D] log-decay
    beta    = sigmoid(b_proj(x))                                      [T, H]
    q, k    = l2norm(q), l2norm(k) over D                             (dialect: eps)
    o       = KDA(q, k, v, g, beta; scale D^-0.5)                     chunked, or naive for T == 1
    out     = o_proj( rmsnorm_D(o) * o_norm * sigmoid(g_b(g_a(x))) )
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kimi_gguf.spec import ModelSpec

from .dialect import Dialect
from .kda import chunk_kda, naive_recurrent_kda
from .ops import causal_conv, l2norm, linear, rmsnorm, sigmoid, silu, softplus
from .xp import XP


@dataclass
class KDAState:
    conv: list          # [q, k, v] conv inputs, each [K-1, H*D]
    S: Any              # recurrent state [H, D_k, D_v]

    @classmethod
    def zeros(cls, xp: XP, spec: ModelSpec) -> "KDAState":
        k = spec.kda
        return cls([xp.zeros((k.conv_kernel - 1, k.proj_dim)) for _ in range(3)],
                   xp.zeros((k.num_heads, k.head_dim, k.head_dim)))


def kda_gate(xp: XP, w: Callable[[str], Any], x, spec: ModelSpec, dialect: Dialect):
    """g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias), [T, H, D]."""
    H, D = spec.kda.num_heads, spec.kda.head_dim
    f = linear(linear(x, w("f_a_proj.weight")), w("f_b_proj.weight")) + w("dt_bias")
    f = softplus(xp, f, dialect.softplus_threshold).reshape(x.shape[0], H, D)
    a = xp.exp(w("A_log").reshape(1, H, 1))
    return -a * f


def kda_block(xp: XP, w: Callable[[str], Any], x, state: KDAState, spec: ModelSpec, dialect: Dialect,
              chunk_size: int = 64, mode: str = "auto", capture: Callable[[str, Any], None] | None = None):
    """x [T, hidden] (already input-normed) -> (out [T, hidden], new KDAState).

    mode: "chunk" (chunked WY/UT form), "naive" (token by token), "auto" (naive for T == 1).
    capture(label, array), if given, receives the intermediates under llama.cpp's graph labels:
    kda_g1 (log-gate), kda_beta (b_proj(x), before the sigmoid), attn_output (recurrence output),
    kda_normed (rmsnorm_D(o) * o_norm, before the gate)."""
    T = x.shape[0]
    H, D = spec.kda.num_heads, spec.kda.head_dim
    convs = []
    new_conv = []
    for j, name in enumerate("qkv"):
        y, st = causal_conv(xp, linear(x, w(f"{name}_proj.weight")),
                            w(f"{name}_conv1d.weight").reshape(spec.kda.proj_dim, -1), state.conv[j])
        convs.append(silu(xp, y).reshape(T, H, D))
        new_conv.append(st)
    q, k, v = convs
    eps = dialect.l2_eps(spec.rms_norm_eps)
    q, k = l2norm(xp, q, eps), l2norm(xp, k, eps)
    g = kda_gate(xp, w, x, spec, dialect)
    beta_logit = linear(x, w("b_proj.weight"))
    beta = sigmoid(xp, beta_logit)                                       # [T, H]
    if capture is not None:
        capture("kda_g1", g)
        capture("kda_beta", beta_logit)
    if mode == "naive" or (mode == "auto" and T == 1):
        o, S = naive_recurrent_kda(q[None], k[None], v[None], g[None], beta[None], initial_state=state.S[None])
    else:
        o, S = chunk_kda(q[None], k[None], v[None], g[None], beta[None], initial_state=state.S[None],
                         chunk_size=chunk_size)
    if capture is not None:
        capture("attn_output", o[0])
    o = rmsnorm(xp, o[0], w("o_norm.weight"), spec.rms_norm_eps)           # [T, H, D], per head
    if capture is not None:
        capture("kda_normed", o)
    gate = linear(linear(x, w("g_a_proj.weight")), w("g_b_proj.weight")).reshape(T, H, D)
    o = (o * sigmoid(xp, gate)).reshape(T, H * D)
    return linear(o, w("o_proj.weight")), KDAState(new_conv, S[0])
