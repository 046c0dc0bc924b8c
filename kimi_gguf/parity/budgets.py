"""The one table of parity budgets: how far llama.cpp may sit from the float64 reference.

A budget is a bound on the *relative* error ||llama - ref||_2 / ||ref||_2 of one captured tensor
(all positions together), looked up by the GGUF's output type and the kind of tensor.

Why these numbers (measured on the tiny checkpoint, see tests/test_parity.py and the parity
report of a real run; they are bounds with headroom, not targets):

* f32: llama.cpp computes in fp32 against a float64 reference; with the ``llamacpp`` dialect the
  only difference is rounding, ~1e-7..1e-6 per tensor, growing slowly with depth. 2e-5 leaves an
  order of magnitude of room yet catches the default dialect's l2norm-eps difference (1e-6 vs
  rms_norm_eps 1e-5 inside the KDA q/k normalisation), which moves KDA outputs by ~1e-4.
* f16 / bf16: every weight is rounded once (2^-11 / 2^-8 relative); products of a few matmuls
  give ~1e-3 (f16) and ~1e-2 (bf16) per tensor.
* q8_0: ~4e-3 per weight block, ~1e-2 per tensor after a few matmuls.
* K-quants: q6_k ~1e-2, q5_k ~3e-2, q4_k ~6e-2 per tensor; the MoE output may flip an expert
  when two router scores are close, so MoE outputs get the widest bound.
* The KDA gate (kda_g1) and beta logits (kda_beta) come from precision-critical tensors the
  converter keeps in f32/f16 in every type, so they keep tighter bounds than the hidden states.
* Logits (result_output) are compared like any other tensor; quality (KL, top-1) is the
  quantization report's job, not parity's.
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
    "f16":    (2e-3,   5e-3,   5e-3,   5e-3,   1e-2,   5e-3,   1e-2),
    "bf16":   (1e-2,   3e-2,   3e-2,   3e-2,   5e-2,   3e-2,   5e-2),
    "q8_0":   (5e-3,   3e-2,   3e-2,   3e-2,   6e-2,   3e-2,   6e-2),
    "q6_k":   (1e-2,   5e-2,   6e-2,   6e-2,   1.5e-1, 6e-2,   1e-1),
    "q5_k":   (1e-2,   8e-2,   1e-1,   1e-1,   2.5e-1, 1e-1,   1.5e-1),
    "q4_k":   (2e-2,   1.5e-1, 2e-1,   2e-1,   4e-1,   2e-1,   3e-1),
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
