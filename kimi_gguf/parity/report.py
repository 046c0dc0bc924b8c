"""Parity report: a per-layer text table, a JSON file and a PNG plot (error per layer and tensor)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..fileio import atomic_write_bytes
from .compare import DialectNote, Row, Verdict, as_dict

_PLOT_ORDER = ("attn_norm", "kda_g1", "kda_beta", "attn_output", "kda_normed", "kda_out", "mla_out",
               "ffn_inp", "ffn_norm", "ffn_moe_out", "ffn_shexp", "ffn_out", "l_out")


def table(rows: list[Row]) -> str:
    gaps = any(r.gap is not None for r in rows)
    head = f"{'tensor':<18} {'tokens':>6} {'rel err':>10} {'max abs':>10} {'cosine':>12} {'budget':>8}"
    lines = [head + (f" {'dialect gap':>12}" if gaps else "")]
    for r in rows:
        flag = "" if r.ok else "  <-- over budget"
        gap = (f" {r.gap:>12.3e}" if r.gap is not None else f" {'-':>12}") if gaps else ""
        lines.append(f"{r.label:<18} {r.tokens:>6} {r.rel:>10.3e} {r.max_abs:>10.3e} {r.cosine:>12.9f} {r.budget:>8.0e}{gap}{flag}")
    return "\n".join(lines)


def summary(v: Verdict, row_name: str, dialect: str) -> str:
    if v.ok:
        return f"parity OK: every tensor within the {row_name} budget (dialect {dialect})"
    f = v.first
    where = f"layer {f.layer}, " if f.layer is not None else ""
    return (f"parity FAILED: first divergence at {f.label} ({where}tensor {f.base}): relative error "
            f"{f.rel:.3e} > budget {f.budget:.0e} ({row_name}, dialect {dialect}); {v.cause}")


def write_json(path: Path, rows: list[Row], v: Verdict, meta: dict, note: DialectNote | None = None) -> None:
    doc = {**meta, **as_dict(rows, v, note)}
    # inf/nan are not JSON: write them as strings so any reader can load the file
    text = json.dumps(doc, indent=1, default=str, allow_nan=False) if _finite(doc) else \
        json.dumps(_stringify(doc), indent=1, default=str)
    atomic_write_bytes(path, text.encode())


def _finite(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def _stringify(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _stringify(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_stringify(v) for v in x]
    return x


def plot(path: Path, rows: list[Row], title: str, v: Verdict | None = None, note: DialectNote | None = None) -> None:
    """Relative error per layer (x) for each tensor (one line each), log scale; attention-side
    tensors on the left, FFN/residual ones on the right, final norm and logits at the far right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    floor = 1e-12  # exact zeros cannot sit on a log axis
    n_layers = 1 + max((r.layer for r in rows if r.layer is not None), default=-1)
    colors = plt.get_cmap("tab10").colors
    panels = (("attention block", _PLOT_ORDER[:7]), ("FFN block and residual stream", _PLOT_ORDER[7:]))
    for ax, (name, group) in zip(axes, panels):
        for j, b in enumerate(x for x in group if any(r.base == x for r in rows)):
            pts = sorted((r.layer, max(r.rel, floor)) for r in rows if r.base == b and r.layer is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^vD<>"[j % 7], ms=4, lw=1,
                    color=colors[j % 10], label=b)
        ax.set_title(name, fontsize=10)
    ax = axes[1]
    for k, r in enumerate(r for r in rows if r.layer is None):
        ax.scatter([n_layers + 0.4 * k], [max(r.rel, floor)], marker="*", s=80, zorder=3,
                   color=colors[(7 + k) % 10], label=r.label)
    if note is not None and note.first is not None:
        # the dialect's own gap at each layer's output: the part of the error the dialect explains
        pts = sorted((r.layer, max(r.gap, floor)) for r in rows
                     if r.base == "l_out" and r.layer is not None and r.gap is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", ls=":", lw=1.5,
                    label=f"l_out gap {note.dialect} vs llamacpp")
    budgets = sorted({r.budget for r in rows})
    for a in axes:
        for b in budgets[:1] + budgets[-1:]:
            a.axhline(b, color="grey", ls="--", lw=0.8)
    if v is not None and v.first is not None:
        f = v.first
        a = axes[0] if f.base in _PLOT_ORDER[:7] else axes[1]
        x = f.layer if f.layer is not None else n_layers
        a.scatter([x], [max(f.rel, floor)], s=180, facecolors="none", edgecolors="red", zorder=4,
                  label=f"first over budget: {f.label}")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("layer" + (" (final norm, logits at the right)" if ax is axes[1] else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    axes[0].set_ylabel("relative error vs reference (dashed: budget)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
