"""`kimi-gguf inspect`: what a GGUF holds -- metadata, the hybrid layer map, tensors, bytes by type.

Reads only the header through gguf-py (tensor data stays on disk); any damage -> one KimiError line.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..errors import KimiError
from .metadata import KEY_CONFIG, KEY_LAYER_ATTN, KEY_LAYER_FFN
from .verify import open_reader

_SKIP_LONG = {gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.TOKEN_TYPE, gguf.Keys.Tokenizer.MERGES,
              gguf.Keys.Tokenizer.SCORES}


def _value(field: gguf.ReaderField, key: str) -> str:
    try:
        v = field.contents()
    except Exception as exc:
        raise KimiError(f"key '{key}' is unreadable ({exc})") from None
    if isinstance(v, list):
        if key in _SKIP_LONG or len(v) > 32:
            return f"[{len(v)} items]"
        return "[" + ", ".join(str(x) for x in v) + "]"
    if isinstance(v, str):
        if key in (gguf.Keys.Tokenizer.CHAT_TEMPLATE, KEY_CONFIG) or len(v) > 80:
            return f"<{len(v)} chars>"
        return repr(v)
    return str(v)


def describe(path: str | Path, *, tensors: bool = True) -> str:
    path = Path(path)
    if path.is_dir():
        raise KimiError(f"{path}: is a directory, not a GGUF file")
    if not path.is_file():
        raise KimiError(f"{path}: no such file")
    r = open_reader(path)
    lines = [f"{path}: GGUF v{_version(r)}, {len(r.fields)} keys, {len(r.tensors)} tensors, "
             f"{path.stat().st_size / 2**20:.2f} MiB"]
    lines.append("metadata:")
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            lines.append(f"  {key} = {_value(field, key)}")
        except KimiError as exc:
            raise KimiError(f"{path}: {exc}") from None
    lines += _layer_map(r)
    by_type: dict[str, tuple[int, int]] = {}
    rows = []
    for t in r.tensors:
        tn = t.tensor_type.name
        n, b = by_type.get(tn, (0, 0))
        by_type[tn] = (n + 1, b + int(t.n_bytes))
        rows.append(f"  {t.name:40s} {tn:6s} {str([int(x) for x in t.shape]):28s} {int(t.n_bytes):>12d}")
    if tensors:
        lines.append(f"tensors ({len(r.tensors)}; name, type, ne, bytes):")
        lines += rows
    lines.append("bytes by type:")
    total = sum(b for _, b in by_type.values()) or 1
    for tn, (n, b) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {tn:6s} {n:5d} tensors {b / 2**20:10.2f} MiB  {100 * b / total:5.1f}%")
    return "\n".join(lines)


def _version(r: gguf.GGUFReader) -> int:
    f = r.get_field("GGUF.version")
    return int(f.contents()) if f is not None else 0


def _layer_map(r: gguf.GGUFReader) -> list[str]:
    fa, ff = r.get_field(KEY_LAYER_ATTN), r.get_field(KEY_LAYER_FFN)
    if fa is None or ff is None:
        kv = r.get_field("kimi-linear.attention.head_count_kv")
        if kv is None:
            return ["hybrid layer map: (not recorded)"]
        attn = ["mla" if h else "kda" for h in np.atleast_1d(kv.contents())]
        lead = r.get_field("kimi-linear.leading_dense_block_count")
        n_lead = int(lead.contents()) if lead is not None else 0
        ffn = ["dense" if i < n_lead else "moe" for i in range(len(attn))]
    else:
        attn, ffn = list(fa.contents()), list(ff.contents())
    out = [f"hybrid layer map ({len(attn)} layers):"]
    for i, (a, f) in enumerate(zip(attn, ffn)):
        out.append(f"  layer {i:3d}: {a.upper():3s} + {f}")
    return out
