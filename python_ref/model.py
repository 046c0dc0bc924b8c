"""The whole Kimi Linear forward pass, top to bottom: the reference every other part is judged against.

    h = embed_tokens[ids]
    for each layer i:
        h = h + attn_i(rmsnorm(h, input_layernorm))            attn: KDA (kda_layer) or MLA (mla)
        h = h + ffn_i(rmsnorm(h, post_attention_layernorm))    ffn: dense SwiGLU or MoE (moe)
    logits = rmsnorm(h, norm) @ lm_head^T

One sequence at a time. Written once over an array module: backend="numpy" (float64 by default,
the ground truth) or backend="torch" (float32 by default, or float64; CPU or CUDA). Weights come
from any TensorSource by canonical name and are converted to the compute dtype on first use.

Incremental decoding: `prefill(ids)` returns the logits and a State holding every layer's carried
state (KDA conv inputs + recurrent state, MLA latent cache); `step(token, state)` / `forward(ids,
state)` continue from it. Any split of a sequence into calls gives the same logits as one call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kimi_gguf.errors import KimiError
from kimi_gguf.spec import DENSE, KDA, ModelSpec

from .dialect import Dialect, get_dialect
from .kda_layer import KDAState, kda_block
from .mla import MLACache, mla_block
from .moe import dense_block, moe_block
from .ops import rmsnorm
from .xp import XP, numpy_xp, torch_xp

# Keep converted weights in memory when the whole model (at the compute dtype) stays below this;
# above it (the published 48B model) every layer re-reads its tensors from the memory-mapped source.
CACHE_LIMIT_BYTES = 8 << 30


@dataclass
class State:
    """Everything carried between calls: one KDAState or MLACache per layer, and the token count."""
    layers: list
    n_tokens: int = 0


@dataclass
class Trace:
    """Block inputs/outputs of one forward, per layer (NumPy copies), for tests and parity."""
    attn_in: dict = field(default_factory=dict)
    attn_out: dict = field(default_factory=dict)
    ffn_in: dict = field(default_factory=dict)
    ffn_out: dict = field(default_factory=dict)
    layer_out: dict = field(default_factory=dict)
    final_norm: Any = None


class KimiLinearRef:
    def __init__(self, spec: ModelSpec | None, source, backend: str = "numpy", dtype: str | None = None,
                 device: str = "cpu", dialect: str | Dialect = "default", chunk_size: int = 64,
                 kda_mode: str = "auto", cache_weights: bool | None = None):
        self.spec = spec if spec is not None else getattr(source, "spec", None)
        if self.spec is None:
            raise KimiError(f"{getattr(source, 'path', source)}: no model spec given and the source has none")
        self.source = source
        if backend == "numpy":
            if device not in ("cpu", None):
                raise KimiError(f"backend numpy runs on the CPU only (got device '{device}')")
            self.xp: XP = numpy_xp({"float64": np.float64, "float32": np.float32}[_check_dtype(dtype or "float64")])
        elif backend == "torch":
            self.xp = torch_xp(_check_dtype(dtype or "float32"), device or "cpu")
        else:
            raise KimiError(f"unknown backend '{backend}' (expected numpy or torch)")
        self.dialect = get_dialect(dialect)
        if kda_mode not in ("auto", "chunk", "naive"):
            raise KimiError(f"unknown kda_mode '{kda_mode}' (expected auto, chunk or naive)")
        self.chunk_size, self.kda_mode = chunk_size, kda_mode
        if cache_weights is None:
            itemsize = 8 if "64" in str(self.xp.dtype) else 4
            n = sum(int(np.prod(source.shape(k))) for k in source.keys())
            cache_weights = n * itemsize <= CACHE_LIMIT_BYTES
        self._cache: dict[str, Any] | None = {} if cache_weights else None

    # ------------------------------------------------------------------ weights
    def weight(self, name: str):
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        if self.spec.tie_word_embeddings and name == "lm_head.weight":
            return self.weight("model.embed_tokens.weight")
        if name not in self.source:
            raise KimiError(f"{self.source.path}: missing tensor '{name}'")
        a = self.xp.asarray(self.source.get(name))
        if self._cache is not None:
            self._cache[name] = a
        return a

    def _w(self, prefix: str):
        return lambda suffix: self.weight(prefix + suffix)

    # ------------------------------------------------------------------ state
    def new_state(self) -> State:
        return State([KDAState.zeros(self.xp, self.spec) if l.attn == KDA else MLACache.empty(self.xp, self.spec)
                      for l in self.spec.layers])

    # ------------------------------------------------------------------ blocks
    def attn(self, i: int, x, layer_state, capture=None):
        """Attention block of layer i on normed input x [T, hidden] -> (out, new layer state)."""
        w = self._w(f"model.layers.{i}.self_attn.")
        if self.spec.layers[i].attn == KDA:
            return kda_block(self.xp, w, x, layer_state, self.spec, self.dialect, self.chunk_size, self.kda_mode,
                             capture=capture)
        return mla_block(self.xp, w, x, layer_state, self.spec, self.dialect)

    def ffn(self, i: int, x, capture=None):
        """FFN block of layer i on normed input x [T, hidden]."""
        if self.spec.layers[i].ffn == DENSE:
            return dense_block(self.xp, self._w(f"model.layers.{i}.mlp."), x)
        return moe_block(self.xp, self._w(f"model.layers.{i}.block_sparse_moe."), x, self.spec, self.dialect,
                         capture=capture)

    # ------------------------------------------------------------------ forward
    def forward(self, ids, state: State | None = None, trace: Trace | None = None, capture=None):
        """Logits [T, vocab] (backend array) for token ids [T]; continues and updates `state` if given.

        capture(label, array), if given, receives every intermediate under the graph label llama.cpp
        gives it (src/models/kimi-linear.cpp: "attn_norm-3", "kda_g1-3", "ffn_moe_out-3", "l_out-3",
        "result_norm", "result_output", ...), as backend arrays; the parity suite compares them."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise KimiError(f"token ids must be a 1-D integer array, got {ids.dtype} shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.spec.vocab_size):
            raise KimiError(f"token id {int(ids.max() if ids.max() >= self.spec.vocab_size else ids.min())} "
                            f"outside the vocabulary (0..{self.spec.vocab_size - 1})")
        xp, spec = self.xp, self.spec
        if state is None:
            state = self.new_state()
        eps = spec.rms_norm_eps
        h = self.weight("model.embed_tokens.weight")[xp.index_array(ids)]
        for i in range(spec.num_layers):
            p = f"model.layers.{i}."
            sub = None if capture is None else (lambda label, a, i=i: capture(f"{label}-{i}", a))
            a_in = rmsnorm(xp, h, self.weight(p + "input_layernorm.weight"), eps)
            a_out, state.layers[i] = self.attn(i, a_in, state.layers[i], capture=sub)
            h = h + a_out
            f_in = rmsnorm(xp, h, self.weight(p + "post_attention_layernorm.weight"), eps)
            f_out = self.ffn(i, f_in, capture=sub)
            if sub is not None:
                attn_label = "kda_out" if spec.layers[i].attn == KDA else "mla_out"
                for label, a in (("attn_norm", a_in), (attn_label, a_out), ("ffn_inp", h), ("ffn_norm", f_in),
                                 ("ffn_out", f_out), ("l_out", h + f_out)):
                    sub(label, a)
            h = h + f_out
            if trace is not None:
                for d, a in ((trace.attn_in, a_in), (trace.attn_out, a_out), (trace.ffn_in, f_in),
                             (trace.ffn_out, f_out), (trace.layer_out, h)):
                    d[i] = xp.to_numpy(a).copy()
        h = rmsnorm(xp, h, self.weight("model.norm.weight"), eps)
        if trace is not None:
            trace.final_norm = xp.to_numpy(h).copy()
        state.n_tokens += int(ids.size)
        logits = h @ self.weight("lm_head.weight").T
        if capture is not None:
            capture("result_norm", h)
            capture("result_output", logits)
        return logits

    def prefill(self, ids):
        """(logits [T, vocab], State) for a fresh sequence."""
        state = self.new_state()
        return self.forward(ids, state), state

    def step(self, token: int, state: State):
        """Logits [vocab] of one more token, continuing `state` (updated in place)."""
        return self.forward(np.asarray([token], dtype=np.int64), state)[0]

    def logits(self, ids) -> np.ndarray:
        """forward() as a NumPy array."""
        return self.xp.to_numpy(self.forward(ids))

    def greedy(self, ids, n_new: int) -> list[int]:
        """Greedy continuation of `ids` by n_new tokens (prefill once, then one step per token)."""
        logits, state = self.prefill(np.asarray(ids, dtype=np.int64))
        out: list[int] = []
        last = self.xp.to_numpy(logits[-1])
        for _ in range(n_new):
            tok = int(np.argmax(last))
            out.append(tok)
            last = self.xp.to_numpy(self.step(tok, state))
        return out


def _check_dtype(d: str) -> str:
    if d not in ("float64", "float32"):
        raise KimiError(f"unknown dtype '{d}' (expected float64 or float32)")
    return d
