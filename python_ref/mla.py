"""The MLA block (multi-head latent attention) of Kimi Linear: no positional encoding at all.

    q            = q_proj(x)  as H heads of (nope + rope)
    c, k_pe      = kv_a_proj_with_mqa(x) split [kv_lora_rank | rope]; c = rmsnorm(c) (dialect eps)
    k_nope, v    = kv_b_proj(c) per head [nope | v]
    K            = [k_nope | k_pe]  (k_pe shared by all heads)
    out          = o_proj( causal softmax(q K^T / sqrt(nope + rope)) V )

The cache for incremental decoding holds the latent: normalised c [N, kv_lora_rank] and k_pe
[N, rope] of every past token; keys and values are re-expanded from it (as llama.cpp's MLA cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kimi_gguf.spec import ModelSpec

from .dialect import Dialect
from .ops import linear, rmsnorm, softmax
from .xp import XP


@dataclass
class MLACache:
    c: Any      # [N, kv_lora_rank] normalised latents
    k_pe: Any   # [N, qk_rope_head_dim]

    @classmethod
    def empty(cls, xp: XP, spec: ModelSpec) -> "MLACache":
        m = spec.mla
        return cls(xp.zeros((0, m.kv_lora_rank)), xp.zeros((0, m.qk_rope_head_dim)))

    @property
    def length(self) -> int:
        return int(self.c.shape[0])


def mla_block(xp: XP, w: Callable[[str], Any], x, cache: MLACache, spec: ModelSpec, dialect: Dialect):
    """x [T, hidden] (already input-normed) -> (out [T, hidden], cache extended by T tokens)."""
    m = spec.mla
    T, H, r = x.shape[0], m.num_heads, m.kv_lora_rank
    nope, rope, dv = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    q = linear(x, w("q_proj.weight")).reshape(T, H, nope + rope)
    kv_a = linear(x, w("kv_a_proj_with_mqa.weight"))
    c = rmsnorm(xp, kv_a[:, :r], w("kv_a_layernorm.weight"), dialect.kv_eps(spec.rms_norm_eps))
    cache = MLACache(xp.concat([cache.c, c], axis=0), xp.concat([cache.k_pe, kv_a[:, r:]], axis=0))
    N, past = cache.length, cache.length - T
    kv = linear(cache.c, w("kv_b_proj.weight")).reshape(N, H, nope + dv)
    k_nope, v = kv[:, :, :nope], kv[:, :, nope:]
    scores = (xp.einsum("thd,nhd->htn", q[:, :, :nope], k_nope)
              + xp.einsum("thd,nd->htn", q[:, :, nope:], cache.k_pe)) * (nope + rope) ** -0.5
    # token t of this call sits at position past + t and sees positions 0 .. past + t
    visible = xp.tril_mask(N, past)[:T]                                    # [T, N]
    scores = xp.where(visible[None], scores, -float("inf"))
    o = xp.einsum("htn,nhd->thd", softmax(xp, scores, axis=-1), v).reshape(T, H * dv)
    return linear(o, w("o_proj.weight")), cache
