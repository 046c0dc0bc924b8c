"""`convert_model`: checkpoint directory -> GGUF file, the library behind `kimi-gguf convert`.

Order of work (every input check happens before the output exists):
config -> ModelSpec -> tensor source (safetensors mmap) -> tokenizer -> plan (names, shapes, dtypes,
types) -> atomic temp file -> streamed tensors -> [llama.cpp K-quant pass] -> [--verify] -> rename.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import KimiError
from ..spec import ModelSpec
from . import quantize as qz
from .atomic import atomic_path, check_target, os_error
from .plan import Plan, make_plan
from .writer import WriteStats, write_gguf


@dataclass
class Summary:
    outfile: Path | None
    outtype: str
    n_tensors: int
    bytes_by_type: dict[str, int]
    count_by_type: dict[str, int]
    kept: list[tuple[str, str, str]]   # (gguf name, type, reason)
    file_size: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    verified: bool = False
    dry_run: bool = False
    vocab_only: bool = False
    intermediate: str = ""

    def format(self, verbose: bool = False) -> str:
        lines = []
        head = "dry run (nothing written)" if self.dry_run else f"wrote {self.outfile}"
        if self.dry_run and self.outtype in qz.KQUANTS:
            head += f" [sizes of the {self.intermediate} intermediate; llama.cpp's quantizer picks the {self.outtype} types]"
        lines.append(f"{head}: {self.n_tensors} tensors, {self.outtype}, "
                     f"{self.file_size / 2**20:.1f} MiB, {self.seconds:.1f} s"
                     + (", verified" if self.verified else ""))
        for t in sorted(self.bytes_by_type, key=lambda t: -self.bytes_by_type[t]):
            lines.append(f"  {t:>6}: {self.count_by_type[t]:5d} tensors  {self.bytes_by_type[t] / 2**20:10.2f} MiB")
        if self.kept:
            reasons: dict[str, list[str]] = {}
            for name, t, why in self.kept:
                reasons.setdefault(f"{t}: {why}", []).append(name)
            lines.append(f"  kept at higher precision ({len(self.kept)} tensors):")
            for why, names in reasons.items():
                shown = ", ".join(names if verbose else _compress(names))
                lines.append(f"    {why} -- {shown}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


def _compress(names: list[str]) -> list[str]:
    """blk.1.ssm_f_a.weight, blk.2.ssm_f_a.weight -> blk.{1,2}.ssm_f_a.weight"""
    groups: dict[str, list[str]] = {}
    for n in names:
        parts = n.split(".")
        if parts[0] == "blk" and len(parts) > 2:
            groups.setdefault(".".join(parts[2:]), []).append(parts[1])
        else:
            groups.setdefault(n, [])
    out = []
    for tail, ids in groups.items():
        out.append(f"blk.{{{','.join(ids)}}}.{tail}" if ids else tail)
    return out


def open_checkpoint(model_dir: Path, spec: ModelSpec):
    from ..checkpoint import HFCheckpoint  # the safetensors mmap TensorSource

    return HFCheckpoint(model_dir, spec)


def load_tokenizer(model_dir: Path):
    from .tokenizer import add_tokenizer_to_gguf, load_kimi_tokenizer

    return load_kimi_tokenizer(model_dir), add_tokenizer_to_gguf


def resolve_outfile(outfile: str | None, model_dir: Path, outtype: str, vocab_only: bool) -> Path:
    if outfile is None:
        name = model_dir.resolve().name or "model"
        outfile = str(model_dir / f"{name}-{'vocab' if vocab_only else '{ftype}'}.gguf")
    return Path(outfile.replace("{ftype}", outtype.upper() if outtype != "auto" else "AUTO"))


def convert_model(model_dir: str | os.PathLike, outfile: str | None = None, outtype: str = "auto", *,
                  force: bool = False, vocab_only: bool = False, dry_run: bool = False,
                  verify: bool = False, strict: bool = False, verbose: bool = False,
                  progress: Callable[[int, int], Callable[[int], None]] | None = None,
                  name: str | None = None) -> Summary:
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise KimiError(f"{model_dir}: model directory does not exist")
    spec = ModelSpec.from_dir(model_dir)
    tok, add_tok = load_tokenizer(model_dir)
    name = name or model_dir.resolve().name

    if vocab_only:
        from .tokenizer import write_vocab_only_gguf

        out = resolve_outfile(outfile, model_dir, "vocab", True)
        if dry_run:
            check_target(out, force)
            return Summary(None, "vocab", 0, {}, {}, [], 0, time.monotonic() - t0, dry_run=True, vocab_only=True)
        write_vocab_only_gguf(model_dir, out, force=force)
        return Summary(out, "vocab", 0, {}, {}, [], out.stat().st_size, time.monotonic() - t0, vocab_only=True)

    source = open_checkpoint(model_dir, spec)
    plan = make_plan(spec, source, outtype)
    out = resolve_outfile(outfile, model_dir, plan.outtype, False)
    if dry_run:
        check_target(out, force)
        return _summary(plan, None, plan.total_bytes, WriteStats(), t0, dry_run=True)

    file_type = qz.FILE_TYPES[plan.write_type]
    with atomic_path(out, force) as tmp:
        cb = progress(plan.total_bytes, len(plan.tensors)) if progress else None
        try:
            stats = write_gguf(plan, source, str(tmp), tokenizer=tok, add_tokenizer=add_tok,
                               file_type=file_type, name=name, strict=strict, progress=cb)
        except OSError as exc:
            raise os_error(exc, out) from None
        finally:
            if cb is not None and hasattr(cb, "close"):
                cb.close()
        final = tmp
        if plan.is_kquant:
            qtmp = tmp.with_name(tmp.name + ".q")
            try:
                from .kquant import quantize_file

                quantize_file(tmp, qtmp, plan.outtype, [p.entry for p in plan.tensors], verbose=verbose)
                os.replace(qtmp, tmp)
            finally:
                if qtmp.exists():
                    qtmp.unlink()
        from .verify import check_file

        types = check_file(final, plan, stats if not plan.is_kquant else None, source=source,
                           full=verify)
        size = final.stat().st_size
    summary = _summary(plan, out, size, stats, t0, types=types)
    summary.verified = verify
    return summary


def _summary(plan: Plan, out: Path | None, size: int, stats: WriteStats, t0: float, *,
             types: dict[str, str] | None = None, dry_run: bool = False) -> Summary:
    by_bytes: dict[str, int] = {}
    by_count: dict[str, int] = {}
    kept = []
    for p in plan.tensors:
        t = types[p.entry.gguf] if types else p.qtype.name
        nb = p.nbytes if not types else _nbytes(p.entry.shape, t)
        by_bytes[t] = by_bytes.get(t, 0) + nb
        by_count[t] = by_count.get(t, 0) + 1
        why = p.entry.keep_f32 or p.reason
        if why and plan.outtype != "f32" and t in ("F32", "F16", "BF16"):
            kept.append((p.entry.gguf, t, why))
    warns = list(stats.nonfinite)
    return Summary(out, plan.outtype, len(plan.tensors), by_bytes, by_count, kept, size,
                   time.monotonic() - t0, warns, dry_run=dry_run, intermediate=plan.write_type)


def _nbytes(shape, tname: str) -> int:
    import gguf

    return qz.nbytes(shape, gguf.GGMLQuantizationType[tname])
