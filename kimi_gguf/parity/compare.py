"""Compare llama.cpp's captured tensors with the reference's, label by label, and explain the
first divergence.

Both sides use llama.cpp's graph labels ("attn_norm-0", "kda_g1-2", "ffn_moe_out-5", "l_out-5",
"result_norm", "result_output"): the capture reads them from the graph, the reference emits the
same labels from its capture hook. Rows are kept in llama.cpp's compute order, so "first" means
first in the forward pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
    ("transformers", ("attn_output", "kda_normed", "kda_out"), "kda",
     "known dialect difference: transformers normalises KDA q/k with l2norm eps 1e-6, "
     "llama.cpp uses rms_norm_eps (1e-5); compare with --dialect llamacpp"),
    ("transformers", ("mla_out",), "mla",
     "known dialect difference: transformers uses eps 1e-6 in the MLA kv_a_layernorm, "
     "llama.cpp uses rms_norm_eps; compare with --dialect llamacpp"),
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


# Runtime settings of llama.cpp that round on purpose (not dialects of the model).
RUNTIME_CAUSE_MLA = ("llama.cpp's flash-attention path and an f16 K/V cache round the MLA keys and values to "
                     "f16 (~5e-4 relative on mla_out); run with --flash-attn off --kv-type f32 for exact parity")

# A float64 dialect gap below this is rounding in the reference itself, not a difference.
GAP_FLOOR = 1e-11


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
    gap: float | None = None  # ||ref(dialect) - ref(llamacpp)|| / ||ref(dialect)||: the dialect's own share
    tokens: int = 0           # leading positions compared (fewer after a routing flip, see compare())


@dataclass
class Flip:
    """llama.cpp chose a different expert set than the reference for some tokens of one MoE layer."""
    layer: int
    positions: list[int]


@dataclass
class DialectNote:
    """Where the chosen dialect departs from llama.cpp's choices, found by comparing the two float64
    references label by label (no llama.cpp noise involved)."""
    dialect: str
    first: str | None            # first label whose gap exceeds GAP_FLOOR
    origins: list[str]           # labels where the gap grows (> 2x the previous row's): where it enters
    origin_kinds: list[str]      # 'kda'/'mla'/'moe'/'dense' of those origins' layers
    cause: str

    def text(self) -> str:
        if self.first is None:
            return f"dialect {self.dialect}: same choices as llama.cpp on these tokens"
        return (f"dialect {self.dialect} departs from llama.cpp's choices first at {self.first}; the gap enters at "
                f"{', '.join(self.origins[:8])}{' ...' if len(self.origins) > 8 else ''} "
                f"({'/'.join(sorted(set(self.origin_kinds)))} layers): {self.cause}")


@dataclass
class Verdict:
    ok: bool
    first: Row | None          # first label over budget (compute order)
    cause: str                 # known dialect difference or the suspect weights
    missing: list[str]         # labels llama.cpp produced but the reference did not (or vice versa)
    flips: list[Flip] = field(default_factory=list)


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


ROUTING = "ffn_moe_topk"


def compare(llama: dict[str, np.ndarray], order: list[str], ref: dict[str, np.ndarray],
            row: str) -> tuple[list[Row], list[str], list[Flip]]:
    """Rows for every label present on both sides, in llama.cpp's order; the unmatched labels; the
    routing flips.

    A routing flip (llama.cpp picks another expert set for token t in layer L, because rounding moved
    a near-tie in the router) changes token t by O(1) from that layer on, and through causal
    attention every later token too, while tokens before t stay untouched. So after a flip each label
    is compared on the positions before the earliest flipped token only (Row.tokens); labels with no
    such position left are not compared. Quantized types flip now and then; f32 must not.
    """
    rows: list[Row] = []
    flips: list[Flip] = []
    cut: int | None = None
    for label in order:
        if label not in ref:
            continue
        base, layer = base_label(label)
        a, r = llama[label], ref[label]
        if a.size != r.size:
            raise KimiError(f"tensor '{label}': llama.cpp has {a.size} values, the reference {r.size}")
        T = a.shape[0]
        if base == ROUTING:
            chosen_l = np.sort(np.rint(a.reshape(T, -1)).astype(np.int64), axis=1)
            chosen_r = np.sort(np.rint(r.reshape(T, -1)).astype(np.int64), axis=1)
            bad = np.nonzero((chosen_l != chosen_r).any(axis=1))[0]
            if cut is not None:  # positions at or after an earlier flip differ as its consequence
                bad = bad[bad < cut]
            if bad.size:
                flips.append(Flip(int(layer), [int(t) for t in bad]))
                cut = min(cut if cut is not None else T, int(bad[0]))
            continue
        n = T if cut is None else cut
        if n == 0:
            continue
        rel, mx, cos = metrics(a[:n], r.reshape(a.shape)[:n])
        b = budget(row, label)
        rows.append(Row(label, base, layer, rel, mx, cos, b, bool(rel <= b), tokens=n))
    missing = sorted((set(order) ^ set(ref)))
    return rows, missing, flips


def add_gaps(rows: list[Row], ref: dict[str, np.ndarray], ref_llamacpp: dict[str, np.ndarray]) -> None:
    """Row.gap: how far the dialect's own reference sits from the llamacpp dialect's, on the same
    positions as the row compares."""
    for r in rows:
        if r.label in ref_llamacpp:
            n = r.tokens or None
            r.gap = metrics(ref_llamacpp[r.label][:n], ref[r.label][:n])[0]


def _kinds(layer: int | None, layer_kinds: list[tuple[str, str]]) -> tuple[str, str]:
    return layer_kinds[layer] if layer is not None and layer < len(layer_kinds) else ("", "")


def _known(dialect: str, base: str, kinds: tuple[str, str]) -> str | None:
    for d, labels, kind, text in KNOWN_CAUSES:
        if d == dialect and base in labels and kind in kinds:
            return text
    return None


# The label each label is computed from (same layer unless noted): a gap "enters" at a label when
# it is much larger there than at its input. Sums (ffn_inp, l_out) only carry gaps along.
INPUT_OF = {
    "kda_g1": "attn_norm", "kda_beta": "attn_norm", "attn_output": "attn_norm", "mla_out": "attn_norm",
    "kda_normed": "attn_output", "kda_out": "kda_normed",
    "ffn_norm": "ffn_inp", "ffn_moe_out": "ffn_norm", "ffn_shexp": "ffn_norm", "ffn_out": "ffn_norm",
}
ENTRY_FACTOR = 10.0


def dialect_note(rows: list[Row], dialect: str, layer_kinds: list[tuple[str, str]]) -> DialectNote | None:
    """Locate where the dialect's reference leaves the llamacpp dialect's (needs Row.gap)."""
    if dialect == "llamacpp" or not any(r.gap is not None for r in rows):
        return None
    gap = {r.label: (r.gap or 0.0) for r in rows}
    first, origins, kinds, causes = None, [], [], []
    for r in rows:
        g = gap[r.label]
        if g <= GAP_FLOOR:
            continue
        first = first or r.label
        src = INPUT_OF.get(r.base)
        if r.layer is None or src is None:
            if r.label != first:
                continue
        elif g <= ENTRY_FACTOR * gap.get(f"{src}-{r.layer}", 0.0):
            continue
        origins.append(r.label)
        k = _kinds(r.layer, layer_kinds)
        kinds.append(k[1] if r.base in ("ffn_moe_out", "ffn_shexp", "ffn_out") else k[0])
        c = _known(dialect, r.base, k)
        if c and c not in causes:
            causes.append(c)
    cause = "; ".join(causes) if causes else "no known cause for this dialect at these tensors"
    return DialectNote(dialect, first, origins, kinds, cause)


def verdict(rows: list[Row], missing: list[str], dialect: str, layer_kinds: list[tuple[str, str]],
            exact_runtime: bool = True, flips: list[Flip] | None = None) -> Verdict:
    """layer_kinds[i] = (attn kind 'kda'|'mla', ffn kind 'dense'|'moe'); exact_runtime: llama.cpp
    ran without flash attention and with an f32 K/V cache."""
    flips = flips or []
    first = next((r for r in rows if not r.ok), None)
    if first is None:
        return Verdict(True, None, "", missing, flips)
    return Verdict(False, first, explain(first, dialect, layer_kinds, rows, exact_runtime), missing, flips)


def flips_text(flips: list[Flip], n_tokens: int) -> str:
    if not flips:
        return ""
    f = flips[0]
    total = sum(len(x.positions) for x in flips)
    earliest = min(x.positions[0] for x in flips)
    kept = (f"later tensors are compared on tokens 0..{earliest - 1} of {n_tokens}" if earliest
            else "later tensors are not compared (token 0 flipped)")
    return (f"routing: llama.cpp chose other experts than the reference for {total} token(s) in {len(flips)} MoE "
            f"layer(s), first at layer {f.layer} token {f.positions[0]}; {kept} "
            "(a flip follows a near-tie in the router scores)")


def explain(first: Row, dialect: str, layer_kinds: list[tuple[str, str]], rows: list[Row] | None = None,
            exact_runtime: bool = True) -> str:
    kinds = _kinds(first.layer, layer_kinds)
    # the dialect's own gap at this tensor explains most of the error: name the known difference
    if first.gap is not None and first.gap > 0.5 * first.rel and dialect != "llamacpp":
        text = _known(dialect, first.base, kinds)
        if text is None:
            note = dialect_note(rows or [first], dialect, layer_kinds)
            text = note.cause if note is not None else "see the dialect note"
        return f"the {dialect} reference itself differs from llama.cpp's choices by {first.gap:.2e} here; {text}"
    text = _known(dialect, first.base, kinds)
    if text and (first.gap is None or first.gap > GAP_FLOOR):
        return text
    if first.base == "mla_out" and not exact_runtime:
        return RUNTIME_CAUSE_MLA
    suspects = SUSPECTS.get(first.base, ())
    if first.layer is not None:
        suspects = tuple(f"blk.{first.layer}.{s}" for s in suspects)
    if suspects:
        return ("the inputs of this tensor were within budget, so look at the weights that produce it: "
                + ", ".join(suspects))
    return "this tensor only adds earlier ones; look at the previous rows"


def as_dict(rows: list[Row], v: Verdict, note: DialectNote | None = None) -> dict:
    return {
        "ok": v.ok,
        "first_divergence": asdict(v.first) if v.first else None,
        "cause": v.cause,
        "dialect_note": ({**asdict(note), "text": note.text()} if note else None),
        "unmatched_labels": v.missing,
        "routing_flips": [asdict(f) for f in v.flips],
        "rows": [asdict(r) for r in rows],
    }
