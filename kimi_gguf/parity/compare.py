"""Compare llama.cpp's captured tensors with the reference's, label by label, and explain the
first divergence.

Both sides use llama.cpp's graph labels ("attn_norm-0", "kda_g1-2", "ffn_moe_out-5", "l_out-5",
"result_norm", "result_output"): the capture reads them from the graph, the reference emits the
same labels from its capture hook. Rows are kept in llama.cpp's compute order, so "first" means
first in the forward pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import KimiError
from .budgets import base_label, budget

# Which GGUF tensors of layer N produce a label from the label(s) before it: when a label is the
# first to leave its budget, these are the suspects (blk.N.<name>).
SUSPECTS = {
    "attn_norm": ("attn_norm",),
    "kda_g1": ("ssm_f_a", "ssm_f_b", "ssm_dt", "ssm_a"),
    "kda_beta": ("ssm_beta",),
    "attn_output": ("attn_q", "attn_k", "attn_v", "ssm_conv1d_q", "ssm_conv1d_k", "ssm_conv1d_v"),
    "kda_normed": ("ssm_norm",),
    "kda_out": ("ssm_g_a", "ssm_g_b", "attn_output"),
    "mla_out": ("attn_q", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output"),
    "ffn_inp": (),
    "ffn_norm": ("ffn_norm",),
    "ffn_moe_out": ("ffn_gate_inp", "exp_probs_b", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
    "ffn_shexp": ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"),
    "ffn_out": ("ffn_gate", "ffn_up", "ffn_down"),
    "l_out": (),
    "result_norm": ("output_norm",),
    "result_output": ("output",),
}

# Known differences between the reference's dialects and llama.cpp: (dialect, labels where they
# first show, layer kind or None, explanation).
KNOWN_CAUSES = (
    ("default", ("attn_output", "kda_normed", "kda_out"), "kda",
     "known dialect difference: the default dialect normalises KDA q/k with l2norm eps 1e-6, "
     "llama.cpp uses rms_norm_eps (1e-5); compare with --dialect llamacpp"),
    ("hf-remote", ("attn_output", "kda_normed", "kda_out"), "kda",
     "known dialect difference: HF remote code normalises KDA q/k with l2norm eps 1e-6, "
     "llama.cpp uses rms_norm_eps (1e-5); compare with --dialect llamacpp"),
    ("hf-remote", ("mla_out",), "mla",
     "known dialect difference: HF remote code uses eps 1e-6 in the MLA kv_a_layernorm, "
     "llama.cpp uses rms_norm_eps; compare with --dialect llamacpp"),
    ("hf-remote", ("ffn_moe_out",), "moe",
     "known dialect difference: HF remote code weights the experts with the bias-corrected router "
     "scores, llama.cpp with the unbiased sigmoid scores; compare with --dialect llamacpp"),
)


@dataclass
class Row:
    label: str
    base: str
    layer: int | None
    rel: float       # ||a - r|| / ||r||
    max_abs: float
    cosine: float
    budget: float
    ok: bool


@dataclass
class Verdict:
    ok: bool
    first: Row | None          # first label over budget (compute order)
    cause: str                 # known dialect difference or the suspect weights
    missing: list[str]         # labels llama.cpp produced but the reference did not (or vice versa)


def metrics(a: np.ndarray, r: np.ndarray) -> tuple[float, float, float]:
    """(relative L2 error, max abs difference, cosine) of a against the reference r, in float64."""
    a = np.asarray(a, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    if a.shape != r.shape:
        raise KimiError(f"shape mismatch: llama.cpp {a.shape} vs reference {r.shape}")
    d = a - r
    nr, na = float(np.linalg.norm(r)), float(np.linalg.norm(a))
    rel = float(np.linalg.norm(d)) / nr if nr > 0 else float(np.linalg.norm(d))
    cos = float(a @ r) / (na * nr) if na > 0 and nr > 0 else (1.0 if na == nr else 0.0)
    if not np.isfinite(d).all():
        rel, cos = float("inf"), float("nan")
    return rel, float(np.abs(d).max(initial=0.0)), cos


def compare(llama: dict[str, np.ndarray], order: list[str], ref: dict[str, np.ndarray],
            row: str) -> tuple[list[Row], list[str]]:
    """Rows for every label present on both sides, in llama.cpp's order; plus the unmatched."""
    rows: list[Row] = []
    for label in order:
        if label not in ref:
            continue
        a, r = llama[label], ref[label]
        if a.size != r.size:
            raise KimiError(f"tensor '{label}': llama.cpp has {a.size} values, the reference {r.size}")
        rel, mx, cos = metrics(a, r.reshape(a.shape))
        base, layer = base_label(label)
        b = budget(row, label)
        rows.append(Row(label, base, layer, rel, mx, cos, b, bool(rel <= b)))
    missing = sorted((set(order) ^ set(ref)))
    return rows, missing


def verdict(rows: list[Row], missing: list[str], dialect: str, layer_kinds: list[tuple[str, str]]) -> Verdict:
    """layer_kinds[i] = (attn kind 'kda'|'mla', ffn kind 'dense'|'moe')."""
    first = next((r for r in rows if not r.ok), None)
    if first is None:
        return Verdict(True, None, "", missing)
    return Verdict(False, first, explain(first, dialect, layer_kinds), missing)


def explain(first: Row, dialect: str, layer_kinds: list[tuple[str, str]]) -> str:
    kinds = layer_kinds[first.layer] if first.layer is not None and first.layer < len(layer_kinds) else ("", "")
    for d, labels, kind, text in KNOWN_CAUSES:
        if d == dialect and first.base in labels and kind in kinds:
            return text
    suspects = SUSPECTS.get(first.base, ())
    if first.layer is not None:
        suspects = tuple(f"blk.{first.layer}.{s}" for s in suspects)
    if suspects:
        return ("the inputs of this tensor were within budget, so look at the weights that produce it: "
                + ", ".join(suspects))
    return "this tensor only adds earlier ones; look at the previous rows"


def as_dict(rows: list[Row], v: Verdict) -> dict:
    return {
        "ok": v.ok,
        "first_divergence": asdict(v.first) if v.first else None,
        "cause": v.cause,
        "unmatched_labels": v.missing,
        "rows": [asdict(r) for r in rows],
    }
