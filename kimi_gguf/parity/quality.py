"""Quantization quality: convert a checkpoint to several GGUF types, run each in llama.cpp, and
measure how far its next-token distribution sits from the float64 reference's.

Per type: mean and max KL(P_ref || P_gguf) over positions (nats), top-1 agreement with the
reference's argmax, perplexity of the text under the GGUF (next-token log-likelihood; the reference's
own perplexity is printed as the first row), file size. The reference runs once; each type is
converted into a temporary directory (or --keep DIR) and run once.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import KimiError
from .llama_capture import run_llama
from ..fileio import atomic_write_bytes, make_output_dir
from .sources import convert_to, reference_run


@dataclass
class QualityRow:
    type: str
    kl_mean: float
    kl_max: float
    top1: float
    ppl: float
    size: int


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_per_position(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) in nats for each position."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)  # clamp -1e-17 rounding


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean -log p(ids[t+1] | ids[:t+1])); nan for a single token."""
    if len(ids) < 2:
        return float("nan")
    lp = log_softmax(logits[:-1])
    nll = -lp[np.arange(len(ids) - 1), ids[1:]]
    return float(math.exp(nll.mean()))


def evaluate(ref_logits: np.ndarray, logits: np.ndarray, ids: np.ndarray, type_: str, size: int) -> QualityRow:
    if logits.shape != ref_logits.shape:
        raise KimiError(f"{type_}: logits shape {logits.shape} differs from the reference's {ref_logits.shape}")
    kl = kl_per_position(ref_logits, logits)
    top1 = float((ref_logits.argmax(-1) == logits.argmax(-1)).mean())
    return QualityRow(type_, float(kl.mean()), float(kl.max()), top1, perplexity(logits, ids), size)


def run_quality(model_dir: str | Path, types: list[str], ids: np.ndarray, *, dialect: str = "llamacpp",
                kda: str = "builtin", keep: str | Path | None = None, threads: int | None = None,
                flash_attn: bool | None = False, kv_type: str = "f32",
                log=print) -> tuple[list[QualityRow], dict]:
    """flash_attn/kv_type as in parity: the exact attention path by default, so the numbers measure
    the weights' quantization alone ("f32" as a type then gives KL ~1e-10, top-1 1.0)."""
    if not types:
        raise KimiError("--types is empty")
    ref_logits, _ = reference_run(model_dir, ids, dialect)
    rows = [QualityRow("reference", 0.0, 0.0, 1.0, perplexity(ref_logits, ids), 0)]
    with tempfile.TemporaryDirectory(prefix="kimi-quality-") as tmp:
        out_dir = Path(keep) if keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for t in types:
            path = out_dir / f"model-{t}.gguf"
            log(f"converting to {t} ...")
            path = convert_to(model_dir, path, t)
            cap = run_llama(path, ids, None, kda=kda, n_threads=threads, flash_attn=flash_attn, kv_type=kv_type)
            rows.append(evaluate(ref_logits, cap.logits, ids, t, path.stat().st_size))
            log(f"  {t}: KL {rows[-1].kl_mean:.3e}, top-1 {rows[-1].top1:.3f}, ppl {rows[-1].ppl:.3f}")
    meta = {"model_dir": str(model_dir), "dialect": dialect, "kda": kda, "n_tokens": int(len(ids)),
            "flash_attn": {None: "auto", True: "on", False: "off"}[flash_attn], "kv_type": kv_type}
    return rows, meta


def table(rows: list[QualityRow]) -> str:
    lines = [f"{'type':<10} {'KL mean':>10} {'KL max':>10} {'top-1':>7} {'ppl':>10} {'size MiB':>9}"]
    for r in rows:
        size = f"{r.size / 2**20:9.2f}" if r.size else f"{'-':>9}"
        lines.append(f"{r.type:<10} {r.kl_mean:>10.3e} {r.kl_max:>10.3e} {r.top1:>7.3f} {r.ppl:>10.3f} {size}")
    return "\n".join(lines)


def write_outputs(rows: list[QualityRow], meta: dict, out_dir: str | Path) -> tuple[Path, Path]:
    d = make_output_dir(out_dir, "report directory")
    js, png = d / "quality.json", d / "quality.png"
    # nan (perplexity of a single token) is not JSON: write null
    doc = {**meta, "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in asdict(r).items()} for r in rows]}
    atomic_write_bytes(js, json.dumps(doc, indent=1, allow_nan=False).encode())
    _plot(png, rows, meta)
    return js, png


def _plot(path: Path, rows: list[QualityRow], meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = [r for r in rows if r.type != "reference"]
    names = [r.type for r in q]
    x = np.arange(len(q))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].bar(x, [max(r.kl_mean, 1e-12) for r in q]); axes[0].set_yscale("log")
    axes[0].set_title("mean KL to reference (nats)")
    axes[1].bar(x, [r.top1 for r in q]); axes[1].set_ylim(0, 1.02); axes[1].set_title("top-1 agreement")
    axes[2].bar(x, [r.ppl for r in q]); axes[2].axhline(rows[0].ppl, color="grey", ls="--", label="reference")
    axes[2].set_title("perplexity"); axes[2].legend(fontsize=7)
    axes[3].bar(x, [r.size / 2**20 for r in q]); axes[3].set_title("file size (MiB)")
    for ax in axes:
        ax.set_xticks(x, names, rotation=30, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"quantization quality vs python_ref float64 ({meta['n_tokens']} tokens, "
                 f"dialect {meta['dialect']}, kda {meta['kda']})", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
