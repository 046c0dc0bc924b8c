"""The one HF <-> GGUF tensor name table.

One `Entry` per GGUF tensor of a Kimi Linear model. Each knows

* the canonical (published Moonshot) tensor names it is made from (`sources`),
* its GGUF name, built from gguf-py's constants (never a string literal),
* its shape in GGUF / NumPy order (the reverse of ggml's ``ne``) as llama.cpp 0c1e570 creates it
  in ``src/models/kimi-linear.cpp`` (``load_arch_tensors``),
* its transform to GGUF and the inverse (``to_gguf`` / ``from_gguf``),
* its precision policy: ``keep_f32`` is a reason string for tensors that stay float32 in every
  output type (KDA gate/decay/conv parameters, norms, the router), None otherwise.

The converter streams through `Entry.chunks`; the GGUF TensorSource reads back through
`canonical_index` + `Entry.from_gguf`; the parity suite labels tensors with `Entry.role`.
Transforms (why each exists):

* ``neg_exp``: llama.cpp reads ``ssm_a`` as the decay rate itself, -exp(A_log); inverse log(-a).
* ``conv``: depthwise conv [C, 1, K] -> ggml ne [K, 1, C, 1]; same memory order (tap fastest), so
  it is a reshape to NumPy (1, C, 1, K).
* ``kv_b_k`` / ``kv_b_v``: MLA ``kv_b_proj`` [H*(nope+v), r] is split per head into
  ``attn_k_b`` (k rows transposed: NumPy (H, r, nope)) and ``attn_v_b`` (NumPy (H, v, r)); llama.cpp
  absorbs them into q and the output (MLA KV cache).
* ``stack``: routed experts (w1 gate, w3 up, w2 down) stacked into one 3-D tensor per layer,
  NumPy (E, rows, cols); the converter streams it expert by expert, never the whole stack.
* ``identity``: everything else; NumPy shape equals the canonical torch shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import gguf
import numpy as np

from .errors import KimiError
from .spec import DENSE, KDA, MOE, ModelSpec

T = gguf.MODEL_TENSOR
ARCH = gguf.MODEL_ARCH.KIMI_LINEAR
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "kimi-linear"

# Why each precision-critical tensor stays float32 (shown in the converter's summary).
KEEP_REASONS = {
    "conv": "KDA short-conv taps: 4 weights per channel, no quantization block fits",
    "ssm_a": "KDA decay rate -exp(A_log): enters exp() of every step's gate",
    "dt_bias": "KDA gate bias: added before softplus; bias precision moves every decay",
    "f_a": "KDA decay (forget) low-rank projection: errors compound through the recurrence",
    "f_b": "KDA decay (forget) low-rank projection: errors compound through the recurrence",
    "g_a": "KDA output-gate low-rank projection: small, feeds a sigmoid gate",
    "g_b": "KDA output-gate low-rank projection: small, feeds a sigmoid gate",
    "beta": "KDA beta (write strength) projection: tiny, feeds a sigmoid per head",
    "norm": "norm weight: 1-D, multiplies every activation",
    "router": "MoE router: expert choice is discontinuous in its logits",
    "router_bias": "MoE router bias (e_score_correction_bias): shifts top-k selection",
}

# Row-block size used to stream large 2-D tensors (embedding, lm_head): bounded memory.
STREAM_ROWS_BYTES = 64 * 1024 * 1024


def _gname(tensor: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[tensor]
    if bid is not None:
        base = base.format(bid=bid)
    return f"{base}.{suffix}" if suffix else base


@dataclass(frozen=True)
class Entry:
    gguf: str
    role: str                      # logical role, e.g. "kda.f_a", "moe.gate_exps", "embed"
    layer: int | None
    sources: tuple[str, ...]       # canonical names (in stacking order for "stack")
    shape: tuple[int, ...]         # GGUF NumPy-order shape
    transform: str                 # identity | neg_exp | conv | kv_b_k | kv_b_v | stack
    keep_f32: str | None = None    # reason, or None when it may be quantized
    params: tuple[int, ...] = ()   # transform parameters (kv_b: n_head, nope, v)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    # -------------------------------------------------------------- forward
    def to_gguf(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Whole GGUF array from the canonical source arrays (small tensors; tests)."""
        by_name = dict(zip(self.sources, parts))

        def read(name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
            return by_name[name] if start is None else by_name[name][start:stop]

        pieces = [c.reshape((-1,) + self.shape[1:]) for c in self.chunks(read)]
        return np.concatenate(pieces, axis=0).reshape(self.shape)

    def chunks(self, read: Callable[..., np.ndarray]) -> Iterator[np.ndarray]:
        """GGUF data in pieces whose concatenation along axis 0 is the tensor (C order).

        ``read(name)`` returns a canonical tensor; ``read(name, start, stop)`` rows of it. Each piece is
        at most one expert or about STREAM_ROWS_BYTES of float32 rows: memory stays bounded.
        """
        t = self.transform
        if t == "stack":
            for name in self.sources:
                yield read(name).reshape((1,) + self.shape[1:])
        elif t == "identity":
            src = self.sources[0]
            rows = self.shape[0] if self.shape else 1
            per_row = max(1, self.n_elements // max(rows, 1))
            step = max(1, STREAM_ROWS_BYTES // (4 * per_row))
            if rows <= step or len(self.shape) < 2:
                yield read(src).reshape(self.shape)
            else:
                for a in range(0, rows, step):
                    b = min(rows, a + step)
                    yield read(src, a, b).reshape((b - a,) + self.shape[1:])
        elif t == "neg_exp":
            x = read(self.sources[0])
            yield (-np.exp(x.astype(np.float64))).astype(x.dtype).reshape(self.shape)
        elif t == "conv":
            yield read(self.sources[0]).reshape(self.shape)
        elif t in ("kv_b_k", "kv_b_v"):
            n_head, nope, v = self.params
            kv = read(self.sources[0])
            kv = kv.reshape(n_head, nope + v, kv.shape[-1])
            if t == "kv_b_k":
                yield np.ascontiguousarray(kv[:, :nope, :].transpose(0, 2, 1))
            else:
                yield np.ascontiguousarray(kv[:, nope:, :])
        else:  # pragma: no cover - table bug
            raise AssertionError(f"unknown transform {t}")

    # -------------------------------------------------------------- inverse
    def from_gguf(self, arr: np.ndarray, index: int, canonical_shape: tuple[int, ...],
                  partner: np.ndarray | None = None) -> np.ndarray:
        """Canonical tensor `sources[index]` from this entry's GGUF array.

        kv_b needs both halves: call it on the ``kv_b_k`` entry with the ``attn_v_b`` array as
        `partner`."""
        t = self.transform
        if t == "stack":
            return arr[index].reshape(canonical_shape)
        if t in ("identity", "conv"):
            return arr.reshape(canonical_shape)
        if t == "neg_exp":
            with np.errstate(divide="ignore", invalid="ignore"):
                # float64: -exp() of it gives back the stored f32 value to 1e-16 (what llama.cpp uses)
                return np.log(-arr.astype(np.float64)).reshape(canonical_shape)
        if t == "kv_b_k":
            if partner is None:
                raise AssertionError("kv_b needs attn_v_b as partner")
            k = arr.transpose(0, 2, 1)  # (H, nope, r)
            return np.concatenate([k, partner], axis=1).reshape(canonical_shape)
        raise AssertionError(f"no inverse from {t} alone ({self.gguf})")


# ---------------------------------------------------------------------- the table
def canonical_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor a checkpoint of `spec` holds, with its torch shape."""
    out: dict[str, tuple[int, ...]] = {}
    h, v = spec.hidden_size, spec.vocab_size
    out["model.embed_tokens.weight"] = (v, h)
    out["model.norm.weight"] = (h,)
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    k, m, e = spec.kda, spec.mla, spec.moe
    for i, layer in enumerate(spec.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        a = p + "self_attn."
        if layer.attn == KDA:
            d, nh = k.proj_dim, k.num_heads
            for x in "qkv":
                out[a + f"{x}_proj.weight"] = (d, h)
                out[a + f"{x}_conv1d.weight"] = (d, 1, k.conv_kernel)
            out[a + "A_log"] = (1, 1, nh, 1)
            out[a + "dt_bias"] = (d,)
            out[a + "f_a_proj.weight"] = (k.head_dim, h)
            out[a + "f_b_proj.weight"] = (d, k.head_dim)
            out[a + "b_proj.weight"] = (nh, h)
            out[a + "g_a_proj.weight"] = (k.head_dim, h)
            out[a + "g_b_proj.weight"] = (d, k.head_dim)
            out[a + "o_norm.weight"] = (k.head_dim,)
            out[a + "o_proj.weight"] = (h, d)
        else:
            out[a + "q_proj.weight"] = (m.num_heads * m.qk_head_dim, h)
            out[a + "kv_a_proj_with_mqa.weight"] = (m.kv_lora_rank + m.qk_rope_head_dim, h)
            out[a + "kv_a_layernorm.weight"] = (m.kv_lora_rank,)
            out[a + "kv_b_proj.weight"] = (m.num_heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)
            out[a + "o_proj.weight"] = (h, m.num_heads * m.v_head_dim)
        if layer.ffn == DENSE:
            f = spec.intermediate_size
            out[p + "mlp.gate_proj.weight"] = (f, h)
            out[p + "mlp.up_proj.weight"] = (f, h)
            out[p + "mlp.down_proj.weight"] = (h, f)
        else:
            b = p + "block_sparse_moe."
            out[b + "gate.weight"] = (e.num_experts, h)
            out[b + "gate.e_score_correction_bias"] = (e.num_experts,)
            for j in range(e.num_experts):
                out[b + f"experts.{j}.w1.weight"] = (e.intermediate_size, h)
                out[b + f"experts.{j}.w3.weight"] = (e.intermediate_size, h)
                out[b + f"experts.{j}.w2.weight"] = (h, e.intermediate_size)
            if e.num_shared_experts:
                s = e.intermediate_size * e.num_shared_experts
                out[b + "shared_experts.gate_proj.weight"] = (s, h)
                out[b + "shared_experts.up_proj.weight"] = (s, h)
                out[b + "shared_experts.down_proj.weight"] = (h, s)
    return out


def check_representable(spec: ModelSpec) -> None:
    """What llama.cpp's kimi-linear graph can express; anything else is refused up front."""
    src = "config.json"
    lead = spec.leading_dense_blocks
    if any(l.ffn == DENSE for l in spec.layers[lead:]):
        raise KimiError(f"{src}: dense FFN layers must all come first (llama.cpp's "
                        "leading_dense_block_count); got a dense layer after an MoE layer")
    if spec.kda_layers() and spec.mla_layers() and spec.kda.num_heads != spec.mla.num_heads:
        raise KimiError(f"{src}: KDA heads ({spec.kda.num_heads}) != attention heads "
                        f"({spec.mla.num_heads}); llama.cpp uses one head count for both")
    if any(l.ffn == MOE for l in spec.layers) and not spec.moe.renormalize:
        raise KimiError(f"{src}: moe_renormalize=false is not supported by llama.cpp's kimi-linear graph")


def build_table(spec: ModelSpec) -> list[Entry]:
    """All GGUF tensors for `spec`, in the order the converter writes them."""
    check_representable(spec)
    h, v = spec.hidden_size, spec.vocab_size
    k, m, e = spec.kda, spec.mla, spec.moe
    R = KEEP_REASONS
    out: list[Entry] = [
        Entry(_gname(T.TOKEN_EMBD), "embed", None, ("model.embed_tokens.weight",), (v, h), "identity"),
    ]
    for i, layer in enumerate(spec.layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."

        def E(t, role, src, shape, transform="identity", keep=None, suffix="weight", params=()):
            out.append(Entry(_gname(t, i, suffix), role, i, tuple(src) if not isinstance(src, str) else (src,),
                             tuple(shape), transform, keep, params))

        E(T.ATTN_NORM, "attn_norm", p + "input_layernorm.weight", (h,), keep=R["norm"])
        if layer.attn == KDA:
            d, nh, kk = k.proj_dim, k.num_heads, k.conv_kernel
            E(T.ATTN_Q, "kda.q", a + "q_proj.weight", (d, h))
            E(T.ATTN_K, "kda.k", a + "k_proj.weight", (d, h))
            E(T.ATTN_V, "kda.v", a + "v_proj.weight", (d, h))
            for x, t in (("q", T.SSM_CONV1D_Q), ("k", T.SSM_CONV1D_K), ("v", T.SSM_CONV1D_V)):
                E(t, f"kda.conv_{x}", a + f"{x}_conv1d.weight", (1, d, 1, kk), "conv", R["conv"])
            E(T.SSM_F_A, "kda.f_a", a + "f_a_proj.weight", (k.head_dim, h), keep=R["f_a"])
            E(T.SSM_F_B, "kda.f_b", a + "f_b_proj.weight", (d, k.head_dim), keep=R["f_b"])
            E(T.SSM_BETA, "kda.beta", a + "b_proj.weight", (nh, h), keep=R["beta"])
            E(T.SSM_A, "kda.a", a + "A_log", (1, 1, nh, 1), "neg_exp", R["ssm_a"], suffix="")
            E(T.SSM_DT, "kda.dt_bias", a + "dt_bias", (d,), keep=R["dt_bias"], suffix="bias")
            E(T.SSM_G_A, "kda.g_a", a + "g_a_proj.weight", (k.head_dim, h), keep=R["g_a"])
            E(T.SSM_G_B, "kda.g_b", a + "g_b_proj.weight", (d, k.head_dim), keep=R["g_b"])
            E(T.SSM_NORM, "kda.o_norm", a + "o_norm.weight", (k.head_dim,), keep=R["norm"])
            E(T.ATTN_OUT, "kda.o", a + "o_proj.weight", (h, d))
        else:
            E(T.ATTN_Q, "mla.q", a + "q_proj.weight", (m.num_heads * m.qk_head_dim, h))
            E(T.ATTN_KV_A_MQA, "mla.kv_a", a + "kv_a_proj_with_mqa.weight",
              (m.kv_lora_rank + m.qk_rope_head_dim, h))
            E(T.ATTN_KV_A_NORM, "mla.kv_a_norm", a + "kv_a_layernorm.weight", (m.kv_lora_rank,), keep=R["norm"])
            kvp = (m.num_heads, m.qk_nope_head_dim, m.v_head_dim)
            E(T.ATTN_K_B, "mla.k_b", a + "kv_b_proj.weight", (m.num_heads, m.kv_lora_rank, m.qk_nope_head_dim),
              "kv_b_k", params=kvp)
            E(T.ATTN_V_B, "mla.v_b", a + "kv_b_proj.weight", (m.num_heads, m.v_head_dim, m.kv_lora_rank),
              "kv_b_v", params=kvp)
            E(T.ATTN_OUT, "mla.o", a + "o_proj.weight", (h, m.num_heads * m.v_head_dim))
        E(T.FFN_NORM, "ffn_norm", p + "post_attention_layernorm.weight", (h,), keep=R["norm"])
        if layer.ffn == DENSE:
            f = spec.intermediate_size
            E(T.FFN_GATE, "dense.gate", p + "mlp.gate_proj.weight", (f, h))
            E(T.FFN_UP, "dense.up", p + "mlp.up_proj.weight", (f, h))
            E(T.FFN_DOWN, "dense.down", p + "mlp.down_proj.weight", (h, f))
        else:
            b, n, fi = p + "block_sparse_moe.", e.num_experts, e.intermediate_size
            E(T.FFN_GATE_INP, "moe.router", b + "gate.weight", (n, h), keep=R["router"])
            E(T.FFN_EXP_PROBS_B, "moe.router_bias", b + "gate.e_score_correction_bias", (n,),
              keep=R["router_bias"], suffix="bias")
            for w, t, role, shp in (("w1", T.FFN_GATE_EXP, "moe.gate_exps", (n, fi, h)),
                                    ("w3", T.FFN_UP_EXP, "moe.up_exps", (n, fi, h)),
                                    ("w2", T.FFN_DOWN_EXP, "moe.down_exps", (n, h, fi))):
                E(t, role, [b + f"experts.{j}.{w}.weight" for j in range(n)], shp, "stack")
            if e.num_shared_experts:
                s = fi * e.num_shared_experts
                E(T.FFN_GATE_SHEXP, "moe.shared_gate", b + "shared_experts.gate_proj.weight", (s, h))
                E(T.FFN_UP_SHEXP, "moe.shared_up", b + "shared_experts.up_proj.weight", (s, h))
                E(T.FFN_DOWN_SHEXP, "moe.shared_down", b + "shared_experts.down_proj.weight", (h, s))
    out.append(Entry(_gname(T.OUTPUT_NORM), "output_norm", None, ("model.norm.weight",), (h,), "identity",
                     R["norm"]))
    # Tied checkpoints carry no lm_head; llama.cpp's kimi-linear requires output.weight, so the
    # embedding is written a second time.
    head_src = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    out.append(Entry(_gname(T.OUTPUT), "lm_head", None, (head_src,), (v, h), "identity"))
    return out


def canonical_index(table: Sequence[Entry]) -> dict[str, tuple[Entry, int]]:
    """canonical name -> (entry that holds it, index in entry.sources). kv_b maps to its k_b half."""
    idx: dict[str, tuple[Entry, int]] = {}
    for ent in table:
        if ent.transform == "kv_b_v":
            continue
        for j, name in enumerate(ent.sources):
            idx.setdefault(name, (ent, j))
    return idx


def kv_b_partner(table: Sequence[Entry], k_entry: Entry) -> Entry:
    want = k_entry.gguf.replace(_gname(T.ATTN_K_B, k_entry.layer), _gname(T.ATTN_V_B, k_entry.layer))
    for ent in table:
        if ent.gguf == want:
            return ent
    raise KimiError(f"{want}: missing (needed with {k_entry.gguf})")
