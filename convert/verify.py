"""Reading a freshly written GGUF back: names, shapes, types always; checksum samples on --verify.

The quick check runs after every conversion (it only reads the header through gguf-py). The full
check (--verify) also compares CRC32 samples of every tensor's bytes with those taken while
writing (direct types), or, after llama.cpp's K-quant pass, re-derives every tensor kept at F32
from the source and compares it byte for byte, and checks a few rows of each quantized tensor
dequantize to finite values.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np

from ..errors import KimiError
from ..names import ARCH_NAME
from . import quantize as qz
from .plan import Plan
from .writer import WriteStats, make_reader, sample_crc


# Smallest possible header records: key-value (key length, type, 1-byte value) and tensor info
# (name length, n_dims, one ne, type, offset). Counts beyond size / these cannot be real.
_MIN_KV_BYTES, _MIN_TENSOR_INFO_BYTES = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8


def open_reader(path: Path) -> gguf.GGUFReader:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise KimiError(f"{path}: cannot open ({exc.strerror})") from None
    if len(head) < 4 and b"GGUF".startswith(head):
        raise KimiError(f"{path}: truncated GGUF ({size} bytes)")
    if head[:4] != b"GGUF":
        raise KimiError(f"{path}: not a GGUF file (bad magic {head[:4]!r})")
    _check_counts(path, head, size)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/IndexError/... on damaged files
        raise KimiError(f"{path}: truncated or corrupt GGUF ({type(exc).__name__}: {str(exc)[:120]})") from None


def _check_counts(path: Path, head: bytes, size: int) -> None:
    """Name the damage gguf-py would only report as an IndexError: a cut header, absurd counts."""
    if len(head) < 24:
        raise KimiError(f"{path}: truncated GGUF ({size} bytes; the fixed header alone is 24)")
    for order in "<>":  # gguf-py reads big-endian files too (their version reads byte-swapped)
        version, n_tensors, n_kv = struct.unpack(order + "IQQ", head[4:24])
        if version in (2, 3):
            break
    else:
        raise KimiError(f"{path}: GGUF version {struct.unpack('<I', head[4:8])[0]} is not supported (2 or 3)")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > size - 24:
        raise KimiError(f"{path}: truncated or corrupt GGUF (header claims {n_kv} keys and {n_tensors} "
                        f"tensors, more than a {size}-byte file can hold)")


def check_file(path: Path, plan: Plan, stats: WriteStats | None, *, source=None, full: bool = False) -> dict[str, str]:
    r = open_reader(path)
    arch = r.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch is None or arch.contents() != ARCH_NAME:
        raise KimiError(f"{path}: verify: general.architecture is not {ARCH_NAME}")
    got = {t.name: t for t in r.tensors}
    if len(got) != len(plan.tensors):
        raise KimiError(f"{path}: verify: {len(got)} tensors, planned {len(plan.tensors)}")
    types: dict[str, str] = {}
    read = make_reader(source) if source is not None else None
    for p in plan.tensors:
        name = p.entry.gguf
        t = got.get(name)
        if t is None:
            raise KimiError(f"{path}: verify: tensor '{name}' missing")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        # llama.cpp's quantizer writes the same ne; compare without trailing 1s, which it may drop
        if _strip(shape) != _strip(p.entry.shape):
            raise KimiError(f"{path}: verify: tensor '{name}' has shape {list(shape)}, expected {list(p.entry.shape)}")
        tname = t.tensor_type.name
        types[name] = tname
        if not plan.is_kquant and t.tensor_type != p.qtype:
            raise KimiError(f"{path}: verify: tensor '{name}' is {tname}, planned {p.qtype.name}")
        if plan.is_kquant and p.entry.keep_f32 and tname != "F32":
            raise KimiError(f"{path}: verify: precision-critical tensor '{name}' came out {tname}, not F32")
        if not full:
            continue
        data = memoryview(np.ascontiguousarray(t.data)).cast("B")
        if stats is not None:
            if sample_crc(data) != stats.samples.get(name):
                raise KimiError(f"{path}: verify: tensor '{name}' checksum differs from what was written")
        elif tname == "F32" and read is not None:
            want = b"".join(qz.encode(c, gguf.GGMLQuantizationType.F32).tobytes() for c in p.entry.chunks(read))
            if bytes(data) != want:
                raise KimiError(f"{path}: verify: tensor '{name}' differs from the source")
        else:
            rows = np.asarray(t.data).reshape(-1, t.data.shape[-1])[:4]
            deq = gguf.quants.dequantize(rows, t.tensor_type)
            if not np.all(np.isfinite(deq)):
                raise KimiError(f"{path}: verify: tensor '{name}' dequantizes to NaN/Inf")
    return types


def _strip(shape: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy-order shape without leading 1s (ggml ne without trailing 1s)."""
    s = list(shape)
    while len(s) > 1 and s[0] == 1:
        s.pop(0)
    return tuple(s)
