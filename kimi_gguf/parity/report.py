"""Parity report: a per-layer text table, a JSON file and a PNG plot (error per layer and tensor)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .compare import DialectNote, Row, Verdict, as_dict

_PLOT_ORDER = ("attn_norm", "kda_g1", "kda_beta", "attn_output", "kda_normed", "kda_out", "mla_out",
               "ffn_inp", "ffn_norm", "ffn_moe_out", "ffn_shexp", "ffn_out", "l_out")


def table(rows: list[Row]) -> str:
    gaps = any(r.gap is not None for r in rows)
    head = f"{'tensor':<18} {'rel err':>10} {'max abs':>10} {'cosine':>12} {'budget':>8}"
    lines = [head + (f" {'dialect gap':>12}" if gaps else "")]
    for r in rows:
        flag = "" if r.ok else "  <-- over budget"
        gap = (f" {r.gap:>12.3e}" if r.gap is not None else f" {'-':>12}") if gaps else ""
        lines.append(f"{r.label:<18} {r.rel:>10.3e} {r.max_abs:>10.3e} {r.cosine:>12.9f} {r.budget:>8.0e}{gap}{flag}")
    return "\n".join(lines)


def summary(v: Verdict, row_name: str, dialect: str) -> str:
    if v.ok:
        return f"parity OK: every tensor within the {row_name} budget (dialect {dialect})"
    f = v.first
    where = f"layer {f.layer}, " if f.layer is not None else ""
    return (f"parity FAILED: first divergence at {f.label} ({where}tensor {f.base}): relative error "
            f"{f.rel:.3e} > budget {f.budget:.0e} ({row_name}, dialect {dialect}); {v.cause}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, rows: list[Row], v: Verdict, meta: dict, note: DialectNote | None = None) -> None:
    doc = {**meta, **as_dict(rows, v, note)}
    # inf/nan are not JSON: write them as strings so any reader can load the file
    text = json.dumps(doc, indent=1, default=str, allow_nan=False) if _finite(doc) else \
        json.dumps(_stringify(doc), indent=1, default=str)
    _atomic_write(path, text.encode())


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
    """Relative error per layer (x) for each tensor kind (one line each), log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    floor = 1e-12  # exact zeros cannot sit on a log axis
    bases = [b for b in _PLOT_ORDER if any(r.base == b for r in rows)]
    for b in bases:
        pts = sorted((r.layer, max(r.rel, floor)) for r in rows if r.base == b and r.layer is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=b)
    n_layers = 1 + max((r.layer for r in rows if r.layer is not None), default=-1)
    for r in rows:
        if r.layer is None:
            ax.scatter([n_layers], [max(r.rel, floor)], marker="*", s=60, label=r.label, zorder=3)
    if note is not None and note.first is not None:
        # the dialect's own gap at each layer's output: the part of the error the dialect explains
        pts = sorted((r.layer, max(r.gap, floor)) for r in rows
                     if r.base == "l_out" and r.layer is not None and r.gap is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", ls=":", lw=1.5,
                    label=f"l_out gap {note.dialect} vs llamacpp")
    budgets = sorted({r.budget for r in rows})
    for b in budgets[:1] + budgets[-1:]:
        ax.axhline(b, color="grey", ls="--", lw=0.8)
    if v is not None and v.first is not None:
        x = v.first.layer if v.first.layer is not None else n_layers
        ax.scatter([x], [max(v.first.rel, floor)], s=160, facecolors="none", edgecolors="red", zorder=4,
                   label=f"first over budget: {v.first.label}")
    ax.set_yscale("log")
    ax.set_xlabel("layer (final norm / logits at the right)")
    ax.set_ylabel("relative error vs reference")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
