"""Row reads for the streaming converter with bounded memory: pread, not mmap.

Reading a tensor through safetensors' memory map leaves every touched page mapped in the process
(counted in its resident set) until the file is closed: converting a 12 GiB checkpoint that way
peaks at ~12.5 GiB RSS. The converter therefore reads plain stored tensors itself: the byte range
of the rows it needs, located by HFCheckpoint (which parsed and validated the headers) and read
with os.pread into a buffer that is dropped after the chunk is written. Anything else (a slice of
a fused transformers tensor, a GGUF source) goes through the source's own API.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import KimiError

_NP = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64}


class RowReader:
    def __init__(self, source):
        self.source = source
        self._headers: dict[Path, tuple[int, dict]] = {}
        self._fds: dict[Path, int] = {}
        self.ok = callable(getattr(source, "_ref", None))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _locate(self, name: str):
        """(file, byte offset of the data, dtype, stored shape) or None when not a plain tensor."""
        if not self.ok:
            return None
        ref = self.source._ref(name)
        if getattr(ref, "select", None) is not None:
            return None
        start, header = self._header(Path(ref.file))
        info = header.get(ref.stored)
        if not isinstance(info, dict) or info.get("dtype") not in _NP:
            return None
        return Path(ref.file), start + int(info["data_offsets"][0]), info["dtype"], tuple(info["shape"])

    def _header(self, file: Path) -> tuple[int, dict]:
        got = self._headers.get(file)
        if got is None:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            got = self._headers[file] = (8 + n, header)
        return got

    def read(self, name: str, start: int | None = None, stop: int | None = None,
             raw: bool = False) -> np.ndarray | None:
        """Rows [start, stop) (all when start is None) in the stored dtype (bf16 as uint16 bits when
        `raw`, else converted to float32); None when the tensor is not a plain stored one."""
        loc = self._locate(name)
        if loc is None:
            return None
        file, base, dtype, shape = loc
        if tuple(shape) != tuple(self.source.shape(name)):
            return None
        np_t = np.dtype(_NP[dtype])
        rows = shape[0] if shape else 1
        per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        a, b = (0, rows) if start is None else (start, min(stop, rows))
        nbytes = (b - a) * per_row * np_t.itemsize
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], base + a * per_row * np_t.itemsize + got)
            if n <= 0:
                raise KimiError(f"{file}: truncated: tensor '{name}' ends past the end of the file")
            got += n
        arr = np.frombuffer(buf, dtype=np_t)
        out_shape = ((b - a),) + tuple(shape[1:]) if start is not None else tuple(shape)
        arr = arr.reshape(out_shape)
        if dtype == "BF16" and not raw:
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if dtype == "F16":
            return arr.astype(np.float32)
        return arr
