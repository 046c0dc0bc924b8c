"""The FFN blocks: dense SwiGLU and the sigmoid-routed MoE with a shared expert.

MoE, per token x (already post-attention-normed):
    s       = sigmoid(gate(x))                              [E] router scores
    chosen  = top-k of s + e_score_correction_bias          the bias only steers the choice
    w       = s[chosen]  (dialect hf-remote: (s + bias)[chosen])
    w       = w / (sum(w) + 1e-20)   (llamacpp: / max(sum(w), 6.1e-5))      if moe_renormalize
    out     = routed_scaling_factor * sum_j w_j expert_j(x) + shared_expert(x)
with every expert a SwiGLU (w1 gate, w3 up, w2 down). Ties in the choice go to the lower expert id.
"""
from __future__ import annotations

from typing import Any, Callable

from kimi_gguf.spec import ModelSpec

from .dialect import Dialect
from .ops import linear, sigmoid, swiglu
from .xp import XP


def dense_block(xp: XP, w: Callable[[str], Any], x):
    return swiglu(xp, x, w("gate_proj.weight"), w("up_proj.weight"), w("down_proj.weight"))


def route(xp: XP, w: Callable[[str], Any], x, spec: ModelSpec, dialect: Dialect):
    """(expert ids [T, k], weights [T, k]) for each token, weights including routed_scaling_factor."""
    moe = spec.moe
    scores = sigmoid(xp, linear(x, w("gate.weight")))                      # [T, E]
    biased = scores + w("gate.e_score_correction_bias")
    ids = xp.argsort_desc(biased, axis=-1)[:, :moe.top_k]                   # [T, k]
    weights = xp.take_along(biased if dialect.moe_biased_weights else scores, ids, axis=-1)
    if moe.renormalize:
        total = xp.sum(weights, axis=-1, keepdims=True)
        if dialect.moe_norm == "clamp":
            total = xp.maximum(total, dialect.moe_norm_eps)
        else:
            total = total + dialect.moe_norm_eps
        weights = weights / total
    return ids, weights * moe.routed_scaling_factor


def moe_block(xp: XP, w: Callable[[str], Any], x, spec: ModelSpec, dialect: Dialect,
              capture: Callable[[str, Any], None] | None = None):
    """x [T, hidden] -> [T, hidden]. Only the chosen experts' weights are touched.

    capture(label, array), if given, receives llama.cpp's labels ffn_moe_topk (chosen expert ids),
    ffn_moe_out (routed experts only) and ffn_shexp (shared expert)."""
    ids, weights = route(xp, w, x, spec, dialect)
    if capture is not None:
        capture("ffn_moe_topk", ids)
    out = xp.zeros(x.shape)
    ids_np = xp.to_numpy(ids)
    for e in sorted(set(int(i) for i in ids_np.reshape(-1))):
        hit = ids == e                                                       # [T, k], one hit per row at most
        tokens = xp.index_array([t for t in range(ids_np.shape[0]) if (ids_np[t] == e).any()])
        we = xp.sum(xp.where(hit, weights, 0.0), axis=-1)[tokens]            # [n]
        p = f"experts.{e}."
        y = swiglu(xp, x[tokens], w(p + "w1.weight"), w(p + "w3.weight"), w(p + "w2.weight"))
        out[tokens] = out[tokens] + we[:, None] * y
    if capture is not None:
        capture("ffn_moe_out", out)
    if spec.moe.num_shared_experts:
        shared = swiglu(xp, x, w("shared_experts.gate_proj.weight"), w("shared_experts.up_proj.weight"),
                        w("shared_experts.down_proj.weight"))
        if capture is not None:
            capture("ffn_shexp", shared)
        out = out + shared
    return out
