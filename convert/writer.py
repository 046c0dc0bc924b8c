"""Streaming GGUF writer: header, keys and tensor infos first, then data tensor by tensor.

gguf-py's GGUFWriter writes the header, the key/value block and the tensor-info block (all sizes
are known from the plan). The data section is then written here piece by piece: each tensor is
read from the mmap'd source in chunks (one expert, or a block of rows), encoded and appended, so
memory holds at most one chunk whatever the model size.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import gguf
import numpy as np

from ..errors import KimiError
from ..names import ARCH_NAME
from ..source import TensorSource
from . import quantize as qz
from .metadata import add_model_keys
from .plan import Plan
from .stream_read import RowReader

SAMPLE_BYTES = 1 << 16  # checksum sample: first and last 64 KiB of every tensor


@dataclass
class WriteStats:
    nonfinite: list[str] = field(default_factory=list)   # "tensor: N NaN/Inf values"
    samples: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (crc head, crc tail)
    bytes_written: int = 0


def make_reader(source: TensorSource, rr: RowReader | None = None) -> Callable[..., np.ndarray]:
    """read(name) -> whole tensor; read(name, a, b) -> rows a:b (pread of just those rows for plain
    safetensors tensors, else the source's row access), so memory holds one chunk at a time."""
    rows = getattr(source, "get_rows", None)

    def read(name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if rr is not None:
            got = rr.read(name, start, stop)
            if got is not None:
                return got
        if start is None:
            return source.get(name)
        if rows is not None:
            return rows(name, start, stop)
        return source.get(name)[start:stop]

    return read


def make_raw_reader(source: TensorSource, rr: RowReader | None = None) -> Callable[..., np.ndarray] | None:
    """Like make_reader, but bf16 tensors come back as their raw bits (uint16), untouched: bf16 stays
    bf16 with no float32 round trip. None when the source cannot hand out stored tensors."""
    get_t = getattr(source, "get_torch", None)
    if get_t is None:
        return None

    def rows_t(name: str, start: int, stop: int):
        f = getattr(source, "get_torch_rows", None)
        if f is not None:
            return f(name, start, stop)
        try:  # HFCheckpoint: a row slice straight from safetensors, the rest never read
            ref = source._ref(name)
            if ref.select is None:
                return source._open(ref.file).get_slice(ref.stored)[start:stop]
        except AttributeError:
            pass
        return get_t(name)[start:stop]

    def read(name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        import torch

        if rr is not None:
            got = rr.read(name, start, stop, raw=True)
            if got is not None:
                return got
        t = get_t(name) if start is None else rows_t(name, start, stop)
        if t.dtype != torch.bfloat16:  # pragma: no cover - guarded by the caller
            raise AssertionError(f"{name}: raw path needs bf16, got {t.dtype}")
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)

    return read


def _nonfinite_bf16(bits: np.ndarray) -> int:
    return int(np.count_nonzero((bits & 0x7F80) == 0x7F80))


class _Sampler:
    """CRC32 of the first and last SAMPLE_BYTES of one tensor's bytes, computed while streaming."""

    def __init__(self, total: int):
        self.total, self.pos = total, 0
        self.head, self.tail = 0, 0
        self.tail_start = max(0, total - SAMPLE_BYTES)

    def feed(self, buf: memoryview) -> None:
        n = len(buf)
        a, b = self.pos, self.pos + n
        if a < SAMPLE_BYTES:
            self.head = zlib.crc32(buf[: min(n, SAMPLE_BYTES - a)], self.head)
        if b > self.tail_start:
            self.tail = zlib.crc32(buf[max(0, self.tail_start - a):], self.tail)
        self.pos = b


def sample_crc(data: bytes | memoryview) -> tuple[int, int]:
    s = _Sampler(len(data))
    s.feed(memoryview(data))
    return s.head, s.tail


def _nonfinite(chunk: np.ndarray) -> int:
    if chunk.dtype.kind != "f":
        return 0
    return int(chunk.size - np.count_nonzero(np.isfinite(chunk)))


def write_gguf(plan: Plan, source: TensorSource, fobj_path: str, *, tokenizer: object | None,
               add_tokenizer: Callable | None, file_type: int, name: str,
               strict: bool = False, progress: Callable[[int], None] | None = None) -> WriteStats:
    """Write the whole GGUF of `plan` to `fobj_path` (a temp path; the caller renames)."""
    w = gguf.GGUFWriter(fobj_path, ARCH_NAME)
    keep = [p.entry.gguf for p in plan.tensors if p.entry.keep_f32]
    add_model_keys(w, plan.spec, name=name, file_type=file_type, tensor_dialect=plan.tensor_dialect,
                   keep_f32=keep)
    if add_tokenizer is not None:
        add_tokenizer(w, tokenizer, plan.spec.vocab_size)
    for p in plan.tensors:
        w.add_tensor_info(p.entry.gguf, p.entry.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    stats = WriteStats()
    rr = RowReader(source)
    read = make_reader(source, rr)
    raw_read = make_raw_reader(source, rr)
    align = w.data_alignment
    try:
        fout.write(b"\0" * (-fout.tell() % align))
        for p in plan.tensors:
            sampler = _Sampler(p.nbytes)
            written = 0
            stack = p.entry.transform == "stack"
            raw = (p.qtype == qz.Q.BF16 and raw_read is not None
                   and p.entry.transform in ("identity", "stack", "conv")
                   and all(str(source.dtype(s)).upper() == "BF16" for s in p.entry.sources))
            for i, chunk in enumerate(p.entry.chunks(raw_read if raw else read)):
                bad = _nonfinite_bf16(chunk) if raw else _nonfinite(chunk)
                if bad:
                    src = p.entry.sources[i if stack else 0]
                    msg = f"{source.path}: tensor '{src}' holds {bad} NaN/Inf values"
                    if strict:
                        raise KimiError(msg + " (--strict refuses it)")
                    stats.nonfinite.append(msg)
                data = chunk if raw else qz.encode(chunk, p.qtype)
                buf = memoryview(np.ascontiguousarray(data)).cast("B")
                sampler.feed(buf)
                fout.write(buf)
                written += len(buf)
                if progress is not None:
                    progress(len(buf))
            if written != p.nbytes:  # pragma: no cover - table/plan bug
                raise KimiError(f"{p.entry.gguf}: wrote {written} bytes, planned {p.nbytes}")
            stats.samples[p.entry.gguf] = (sampler.head, sampler.tail)
            stats.bytes_written += written
            fout.write(b"\0" * (-written % align))
        fout.flush()
    finally:
        rr.close()
        w.close()
    return stats
