"""GGUFSource: a GGUF file presented as a TensorSource (canonical names and torch shapes).

Reads through the same name table as the converter (kimi_gguf.names), undoing each transform
(log(-ssm_a) -> A_log, conv reshape, attn_k_b/attn_v_b -> kv_b_proj, stacked experts -> one expert)
and dequantizing with gguf-py, so the float64 reference runs on exactly what llama.cpp loads.
The ModelSpec comes from the source config the converter stored (`kimi_gguf.source_config`), or,
for GGUFs written by other converters, is rebuilt from llama.cpp's own keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np

from ..errors import KimiError
from ..names import Entry, build_table, canonical_index, canonical_shapes, kv_b_partner
from ..spec import ModelSpec
from .metadata import KEY_CONFIG, KEY_TENSOR_DIALECT
from .verify import open_reader


class GGUFSource:
    def __init__(self, path: str | Path, spec: ModelSpec | None = None):
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise KimiError(f"{p}: GGUF file does not exist")
        self._r = open_reader(p)
        self._tensors = {t.name: t for t in self._r.tensors}
        self.spec = spec or spec_from_gguf(self._r, self.path)
        self._table = build_table(self.spec)
        self._index = canonical_index(self._table)
        self._shapes = canonical_shapes(self.spec)
        if self.spec.tie_word_embeddings:
            self._shapes.setdefault("lm_head.weight", self._shapes["model.embed_tokens.weight"])
            self._index.setdefault("lm_head.weight", self._index["model.embed_tokens.weight"])
        for ent in self._table:
            t = self._tensors.get(ent.gguf)
            if t is None:
                raise KimiError(f"{self.path}: missing tensor '{ent.gguf}'")
            ne = tuple(int(x) for x in t.shape.tolist())
            want = tuple(reversed(ent.shape))
            if _strip(ne) != _strip(want):
                raise KimiError(f"{self.path}: tensor '{ent.gguf}' has ne {list(ne)}, expected {list(want)}")
        f = self._r.get_field(KEY_TENSOR_DIALECT)
        self.dialect = f.contents() if f is not None else "gguf"

    # ------------------------------------------------------------------ TensorSource
    def keys(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        self._entry(name)
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        ent, _ = self._entry(name)
        return self._tensors[ent.gguf].tensor_type.name

    def entry(self, name: str) -> Entry:
        """The name-table entry (GGUF tensor) holding canonical tensor `name`."""
        return self._entry(name)[0]

    def get(self, name: str) -> np.ndarray:
        ent, idx = self._entry(name)
        shape = self._shapes[name]
        if ent.transform == "stack":
            return ent.from_gguf(self._array(ent, idx)[None], 0, shape)
        arr = self._array(ent)
        partner = self._array(kv_b_partner(self._table, ent)) if ent.transform == "kv_b_k" else None
        return np.ascontiguousarray(ent.from_gguf(arr, idx, shape, partner))

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.get(name)[start:stop]

    # ------------------------------------------------------------------ internals
    def _entry(self, name: str) -> tuple[Entry, int]:
        try:
            return self._index[name]
        except KeyError:
            raise KimiError(f"{self.path}: no tensor '{name}' in this model") from None

    def _array(self, ent: Entry, index: int | None = None) -> np.ndarray:
        t = self._tensors[ent.gguf]
        data = t.data if index is None else t.data[index]
        try:
            out = gguf.quants.dequantize(np.asarray(data), t.tensor_type)
        except NotImplementedError:
            raise KimiError(f"{self.path}: tensor '{ent.gguf}' has type {t.tensor_type.name}, "
                            "which gguf-py cannot dequantize") from None
        except (ValueError, IndexError) as exc:
            raise KimiError(f"{self.path}: tensor '{ent.gguf}' is unreadable ({exc})") from None
        shape = ent.shape if index is None else ent.shape[1:]
        return out.astype(np.float32, copy=False).reshape(shape)


def _strip(ne: tuple[int, ...]) -> tuple[int, ...]:
    s = list(ne)
    while len(s) > 1 and s[-1] == 1:
        s.pop()
    return tuple(s)


# ---------------------------------------------------------------------- spec from a GGUF
def _field(r: gguf.GGUFReader, key: str, path: str, default=...):
    f = r.get_field(key)
    if f is None:
        if default is ...:
            raise KimiError(f"{path}: missing GGUF key '{key}'")
        return default
    return f.contents()


def spec_from_gguf(r: gguf.GGUFReader, path: str) -> ModelSpec:
    arch = _field(r, gguf.Keys.General.ARCHITECTURE, path)
    if arch != "kimi-linear":
        raise KimiError(f"{path}: architecture is '{arch}', not kimi-linear")
    stored = _field(r, KEY_CONFIG, path, None)
    if stored:
        try:
            cfg = json.loads(stored)
        except json.JSONDecodeError:
            raise KimiError(f"{path}: key '{KEY_CONFIG}' is not valid JSON") from None
        return ModelSpec.from_config(cfg, f"{path}:{KEY_CONFIG}")
    return ModelSpec.from_config(_config_from_llama_keys(r, path), f"{path} (llama.cpp keys)")


def _config_from_llama_keys(r: gguf.GGUFReader, path: str) -> dict:
    """A Moonshot-dialect config rebuilt from llama.cpp's keys (GGUFs from other converters)."""
    a = "kimi-linear"

    def k(key: str, default=...):
        return _field(r, key.format(arch=a), path, default)

    K = gguf.Keys
    kv = k(K.Attention.HEAD_COUNT_KV)
    kv = list(kv) if isinstance(kv, list) else [kv] * int(k(K.LLM.BLOCK_COUNT))
    n = len(kv)
    full = [i + 1 for i, h in enumerate(kv) if h]
    tok = r.get_field(gguf.Keys.Tokenizer.LIST)
    vocab = k(K.LLM.VOCAB_SIZE, None) or (len(tok.data) if tok is not None else None)
    if vocab is None:
        raise KimiError(f"{path}: cannot tell the vocabulary size (no {K.LLM.VOCAB_SIZE} or token list)")
    rope = int(k(K.Rope.DIMENSION_COUNT))
    return {
        "model_type": "kimi_linear",
        "num_hidden_layers": n,
        "vocab_size": int(vocab),
        "hidden_size": int(k(K.LLM.EMBEDDING_LENGTH)),
        "intermediate_size": int(k(K.LLM.FEED_FORWARD_LENGTH)),
        "rms_norm_eps": float(k(K.Attention.LAYERNORM_RMS_EPS)),
        "max_position_embeddings": int(k(K.LLM.CONTEXT_LENGTH)),
        "linear_attn_config": {"full_attn_layers": full,
                               "kda_layers": [i for i in range(1, n + 1) if i not in full],
                               "num_heads": int(k(K.Attention.HEAD_COUNT)),
                               "head_dim": int(k(K.KDA.HEAD_DIM)),
                               "short_conv_kernel_size": int(k(K.SSM.CONV_KERNEL))},
        "num_attention_heads": int(k(K.Attention.HEAD_COUNT)),
        "qk_nope_head_dim": int(k(K.Attention.KEY_LENGTH_MLA)) - rope,
        "qk_rope_head_dim": rope,
        "v_head_dim": int(k(K.Attention.VALUE_LENGTH_MLA)),
        "kv_lora_rank": int(k(K.Attention.KV_LORA_RANK)),
        "num_experts": int(k(K.LLM.EXPERT_COUNT)),
        "num_experts_per_token": int(k(K.LLM.EXPERT_USED_COUNT)),
        "moe_intermediate_size": int(k(K.LLM.EXPERT_FEED_FORWARD_LENGTH)),
        "num_shared_experts": int(k(K.LLM.EXPERT_SHARED_COUNT, 0)),
        "first_k_dense_replace": int(k(K.LLM.LEADING_DENSE_BLOCK_COUNT, 0)),
        "routed_scaling_factor": float(k(K.LLM.EXPERT_WEIGHTS_SCALE, 1.0)),
        "tie_word_embeddings": False,
    }
