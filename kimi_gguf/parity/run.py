"""One parity run: the same tokens through llama.cpp and python_ref, every label compared."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KimiError
from ..fileio import make_output_dir
from ..spec import ModelSpec
from . import budgets, compare, report
from .llama_capture import default_labels, run_llama
from .sources import reference_run


@dataclass
class ParityResult:
    rows: list[compare.Row]
    verdict: compare.Verdict
    note: compare.DialectNote | None
    budget_row: str
    logits_llama: np.ndarray
    logits_ref: np.ndarray
    meta: dict


def gguf_file_type(path: str | Path) -> int | None:
    from ..convert.verify import open_reader  # names a cut header / absurd counts, not just gguf-py's error

    if not Path(path).is_file():
        raise KimiError(f"{path}: no such GGUF file")
    try:
        r = open_reader(Path(path))
    except KimiError as exc:
        why = str(exc).removeprefix(f"{path}: ")
        if why.startswith("truncated or corrupt GGUF (") and why.endswith(")"):
            why = why[len("truncated or corrupt GGUF ("):-1]
        raise KimiError(f"{path}: not a readable GGUF ({why})") from None
    f = r.fields.get("general.file_type")
    return int(f.parts[f.data[0]][0]) if f is not None else None


def run_parity(model_dir: str | Path, gguf_path: str | Path, ids: np.ndarray, *, dialect: str = "llamacpp",
               kda: str = "builtin", budget_type: str | None = None, threads: int | None = None,
               flash_attn: bool | None = False, kv_type: str = "f32") -> ParityResult:
    """flash_attn/kv_type: llama.cpp's attention path. The defaults (no flash attention, f32 K/V
    cache) are the exact ones; flash attention (llama.cpp's CPU "auto" choice) and an f16 cache
    round MLA's keys and values to f16, which the f32 budget does not allow for."""
    spec = ModelSpec.from_dir(model_dir)
    row = budgets.row_for(budget_type) if budget_type else budgets.row_for_ftype(gguf_file_type(gguf_path))
    cap = run_llama(gguf_path, ids, default_labels(spec.num_layers), kda=kda, n_threads=threads,
                    flash_attn=flash_attn, kv_type=kv_type)
    logits_ref, ref = reference_run(model_dir, ids, dialect)
    rows, missing, flips = compare.compare(cap.tensors, cap.order, ref, row)
    if not rows:
        raise KimiError(f"{gguf_path}: no tensor label in common between llama.cpp and the reference")
    kinds = [(l.attn, l.ffn) for l in spec.layers]
    note = None
    if dialect != "llamacpp":
        # the same forward in llama.cpp's dialect shows where this dialect's own choices enter
        compare.add_gaps(rows, ref, reference_run(model_dir, ids, "llamacpp")[1])
        note = compare.dialect_note(rows, dialect, kinds)
    v = compare.verdict(rows, missing, dialect, kinds, exact_runtime=(flash_attn is False and kv_type == "f32"),
                        flips=flips)
    meta = {"model_dir": str(model_dir), "gguf": str(gguf_path), "dialect": dialect, "kda": kda,
            "flash_attn": {None: "auto", True: "on", False: "off"}[flash_attn], "kv_type": kv_type,
            "budget_row": row, "n_tokens": int(len(ids)),
            "bridge_calls": cap.bridge_calls, "layers": [f"{a}/{f}" for a, f in kinds]}
    return ParityResult(rows, v, note, row, cap.logits, logits_ref, meta)


def write_report(res: ParityResult, out_dir: str | Path) -> tuple[Path, Path]:
    d = make_output_dir(out_dir, "report directory")
    js, png = d / "parity.json", d / "parity.png"
    report.write_json(js, res.rows, res.verdict, res.meta, res.note)
    title = (f"llama.cpp vs python_ref ({res.budget_row}, dialect {res.meta['dialect']}, "
             f"kda {res.meta['kda']}, {res.meta['n_tokens']} tokens)")
    report.plot(png, res.rows, title, res.verdict, res.note)
    return js, png
