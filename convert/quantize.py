"""Output types: which ggml type each tensor gets, and the direct encoders (gguf-py's quantizer).

f32/f16/bf16/q8_0 are encoded here, chunk by chunk. The K-quants (q4_k_m, q5_k_m, q6_k) are made
by llama.cpp's own quantizer (see kquant.py) from an intermediate file written at source precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from ..names import Entry

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

DIRECT = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
KQUANTS = {"q4_k_m": FT.MOSTLY_Q4_K_M, "q5_k_m": FT.MOSTLY_Q5_K_M, "q6_k": FT.MOSTLY_Q6_K}
FILE_TYPES = {"f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "bf16": FT.MOSTLY_BF16, "q8_0": FT.MOSTLY_Q8_0, **KQUANTS}
OUTTYPES = tuple(DIRECT) + tuple(KQUANTS) + ("auto",)


def resolve_auto(source_dtypes: set[str]) -> str:
    """convert_hf_to_gguf.py's `auto`: a float16 checkpoint stays f16, anything else becomes bf16."""
    return "f16" if source_dtypes == {"F16"} else "bf16"


def intermediate_type(source_dtypes: set[str]) -> str:
    """Precision of the file handed to llama.cpp's quantizer: never below the source's."""
    if source_dtypes <= {"BF16"}:
        return "bf16"
    if source_dtypes <= {"F16"}:
        return "f16"
    return "f32"


@dataclass(frozen=True)
class TypeChoice:
    qtype: gguf.GGMLQuantizationType
    reason: str | None  # why it is not the requested type (None when it is)


def choose(entry: Entry, outtype: str) -> TypeChoice:
    """ggml type of one tensor for a direct outtype (f32/f16/bf16/q8_0)."""
    want = DIRECT[outtype]
    if want == Q.F32:
        return TypeChoice(Q.F32, None)
    if entry.keep_f32:
        return TypeChoice(Q.F32, entry.keep_f32)
    if len([d for d in entry.shape if d != 1]) <= 1:
        return TypeChoice(Q.F32, "1-D tensor")
    block = gguf.GGML_QUANT_SIZES[want][0]
    if entry.shape[-1] % block:
        # as convert_hf_to_gguf.py does: rows that do not fill whole blocks fall back to f16
        return TypeChoice(Q.F16, f"row length {entry.shape[-1]} is not a multiple of {want.name}'s block {block}")
    return TypeChoice(want, None)


def nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


def encode(chunk: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """One chunk (whole rows) in the on-disk encoding of `qtype`."""
    if qtype == Q.F32:
        return np.ascontiguousarray(chunk, dtype=np.float32)
    if chunk.dtype != np.float32:
        chunk = chunk.astype(np.float32)
    return gguf.quants.quantize(np.ascontiguousarray(chunk), qtype)
