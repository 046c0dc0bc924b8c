"""TensorSource: a lazy mapping from canonical tensor names to arrays.

Canonical names are the published (Moonshot) checkpoint's names, e.g.
``model.layers.3.self_attn.q_proj.weight``, ``model.layers.5.block_sparse_moe.experts.7.w1.weight``,
``model.layers.0.mlp.gate_proj.weight`` (the dense layer), ``model.embed_tokens.weight``,
``lm_head.weight``, with the published shapes (torch order) -- see
KIMI_LINEAR_FACTS.md. Whatever a file stores (transformers' fused names, GGUF's stacked experts and
transformed tensors), a source presents it in this one form, so the reference model, the converter
and the parity suite all speak the same names.

Implementations: kimi_gguf.checkpoint.HFCheckpoint (safetensors, mmap) and the GGUF source of
kimi_gguf.convert (gguf-py, dequantized).
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TensorSource(Protocol):
    path: str  # for error messages

    def keys(self) -> list[str]:
        """All canonical names, in a stable order."""

    def shape(self, name: str) -> tuple[int, ...]:
        """Canonical (torch-order) shape, without reading data."""

    def dtype(self, name: str) -> str:
        """Stored dtype name as the file has it (e.g. 'BF16', 'F32', 'Q8_0')."""

    def get(self, name: str) -> np.ndarray:
        """The tensor as a NumPy array in its canonical shape, float32 or float64 (never bf16).

        Raises KimiError naming the file and tensor when it is missing or unreadable."""

    def __contains__(self, name: str) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...
