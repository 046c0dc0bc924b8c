"""The one table of parity budgets: how far llama.cpp may sit from the float64 reference.

A budget is a bound on the *relative* error ||llama - ref||_2 / ||ref||_2 of one captured tensor
(all positions together), looked up by the GGUF's output type and the kind of tensor.

Why these numbers: they are the largest errors measured on the tiny checkpoint (make-tiny, seed 0;
four prompts of 39 to 256 tokens; llama.cpp without flash attention, f32 K/V cache; positions after
a routing flip excluded, see compare.compare), times about 2.5, rounded. Measured maxima, 2026-11-27:

    type     gate     norm     attn     ffn      moe      resid    logits   routing flips
    f32      4.8e-7   9.0e-7   9.1e-7   7.5e-7   7.8e-7   5.1e-7   5.2e-7    0
    f16      6.2e-4   1.3e-3   1.4e-3   1.1e-3   1.1e-3   7.2e-4   7.6e-4    4
    bf16     8.7e-3   1.2e-2   1.4e-2   1.2e-2   1.2e-2   6.1e-3   6.7e-3   10
    q8_0     3.4e-2   6.2e-2   8.5e-2   5.3e-2   4.8e-2   3.1e-2   3.2e-2   25
    q6_k     (the same as q8_0: see below)
    q5_k_m   2.5e-1   4.4e-1   8.8e-1   2.9e-1   2.1e-1   1.5e-1   1.4e-1   28
    q4_k_m   2.0e-1   4.5e-1   5.1e-1   3.0e-1   2.0e-1   1.6e-1   1.6e-1   28

* f32: llama.cpp computes in fp32 against a float64 reference; in the ``llamacpp`` dialect the only
  difference is rounding. 2e-5 leaves 20x room and still fails on a 1e-3 perturbation of one
  tensor (tests/test_parity.py). llama.cpp's flash-attention path and an f16 K/V cache add ~5e-4 on
  MLA outputs: parity runs without them unless asked (see compare.RUNTIME_CAUSE_MLA).
* Other types: weight rounding (~1e-3 for f16 up to a few 1e-2 for 4-bit per tensor) plus
  llama.cpp's rounding of the activations to q8 for quantized matmuls, growing through the layers
  of the tiny random model (which amplifies perturbations more than a trained one). The tiny model
  has 64-wide rows, so the K-quant types fall back to legacy block types for most tensors (q6_k
  behaves like q8_0 there, q5_k_m/q4_k_m like q5_0/q4_0 or worse); their rows only catch gross
  errors (a wrong transform, a transposed or missing tensor gives relative errors >= 1).
  Weight-quantization quality is `kimi-gguf quality`'s job (KL, top-1, perplexity).
"""
from __future__ import annotations

from ..errors import KimiError

# tensor kinds: what a graph label measures
GATE, NORM, ATTN, FFN, MOE, RESID, LOGITS = "gate", "norm", "attn", "ffn", "moe", "resid", "logits"

KIND_OF = {
    "attn_norm": NORM, "ffn_norm": NORM, "kda_normed": NORM, "result_norm": NORM,
    "kda_g1": GATE, "kda_beta": GATE,
    "attn_output": ATTN, "kda_out": ATTN, "mla_out": ATTN,
    "ffn_out": FFN, "ffn_shexp": FFN,
    "ffn_moe_out": MOE,
    "ffn_inp": RESID, "l_out": RESID,
    "result_output": LOGITS,
}

#            gate    norm    attn    ffn     moe     resid   logits
_COLUMNS = (GATE, NORM, ATTN, FFN, MOE, RESID, LOGITS)
_ROWS = {
    "f32":    (2e-5,   2e-5,   2e-5,   2e-5,   2e-5,   2e-5,   2e-5),
    "f16":    (2e-3,   4e-3,   4e-3,   3e-3,   3e-3,   2e-3,   2e-3),
    "bf16":   (2e-2,   3e-2,   4e-2,   3e-2,   3e-2,   1.5e-2, 2e-2),
    "q8_0":   (1e-1,   1.5e-1, 2e-1,   1.5e-1, 1.2e-1, 8e-2,   8e-2),
    "q6_k":   (1e-1,   1.5e-1, 2e-1,   1.5e-1, 1.2e-1, 8e-2,   8e-2),
    "q5_k":   (6e-1,   1.0,    1.5,    7e-1,   6e-1,   4e-1,   4e-1),
    "q4_k":   (6e-1,   1.0,    1.5,    7e-1,   6e-1,   4e-1,   4e-1),
}
BUDGETS: dict[str, dict[str, float]] = {t: dict(zip(_COLUMNS, row)) for t, row in _ROWS.items()}

# GGUF general.file_type (llama_ftype) -> row of the table
_FTYPE_ROW = {0: "f32", 1: "f16", 32: "bf16", 7: "q8_0", 18: "q6_k", 16: "q5_k", 17: "q5_k",
              14: "q4_k", 15: "q4_k", 12: "q4_k", 13: "q4_k"}
_NAME_ROW = {"q5_k_m": "q5_k", "q5_k_s": "q5_k", "q4_k_m": "q4_k", "q4_k_s": "q4_k"}


def row_for(out_type: str) -> str:
    """'q4_k_m' -> 'q4_k' etc.; KimiError for a type without a budget row."""
    t = out_type.lower()
    t = _NAME_ROW.get(t, t)
    if t not in BUDGETS:
        raise KimiError(f"no parity budget for output type '{out_type}' (known: {', '.join(BUDGETS)})")
    return t


def row_for_ftype(ftype: int | None) -> str:
    if ftype is None:
        return "f32"
    if ftype not in _FTYPE_ROW:
        raise KimiError(f"no parity budget for GGUF general.file_type {ftype}")
    return _FTYPE_ROW[ftype]


def base_label(label: str) -> tuple[str, int | None]:
    """'kda_g1-3' -> ('kda_g1', 3); 'result_norm' -> ('result_norm', None)."""
    head, _, tail = label.rpartition("-")
    if head and tail.isdigit():
        return head, int(tail)
    return label, None


def budget(row: str, label: str) -> float:
    base, _ = base_label(label)
    kind = KIND_OF.get(base)
    if kind is None:
        raise KimiError(f"no parity budget for tensor '{label}'")
    return BUDGETS[row][kind]
