"""K-quants through llama.cpp's own quantizer (llama_model_quantize via llama-cpp-python).

The converter first writes an intermediate GGUF at source precision (bf16/f16/f32, precision-
critical tensors already f32); llama.cpp then quantizes it in-process, no separate binary. Its own
rules already leave 1-D tensors, norms, conv1d, the router (ffn_gate_inp) and ssm_a alone; the
tensor-type overrides below pin the remaining precision-critical KDA projections (f_a/f_b, g_a/g_b,
beta) to F32 -- llama.cpp would quantize them otherwise. The caller reads the result back to check.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from pathlib import Path

from ..errors import KimiError
from ..names import Entry
from . import quantize as qz

F32 = 0  # GGML_TYPE_F32


def override_patterns(entries: list[Entry]) -> list[str]:
    """One anchored regex per GGUF tensor that must stay F32 (weights llama.cpp would quantize)."""
    return ["^" + re.escape(e.gguf) + "$" for e in entries if e.keep_f32 and e.gguf.endswith(".weight")]


def quantize_file(src: Path, dst: Path, outtype: str, keep_f32: list[Entry], *, verbose: bool = False,
                  nthread: int = 0) -> None:
    import llama_cpp
    from llama_cpp import _logger  # noqa: F401  (installs llama.cpp's log callback)

    _logger.set_verbose(verbose)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qz.KQUANTS[outtype])
    params.nthread = nthread
    params.allow_requantize = False
    params.quantize_output_tensor = True
    # llama.cpp's default keeps up to 8 GiB of rows in memory; stay within the converter's budget
    params.max_buf_size = 256 << 20
    pats = override_patterns(keep_f32)
    arr = (llama_cpp.llama_model_tensor_override * (len(pats) + 1))()
    keep_alive = [p.encode() for p in pats]
    for i, p in enumerate(keep_alive):
        arr[i].pattern = p
        arr[i].type = F32
    arr[len(pats)].pattern = None
    params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    with _captured_stderr(verbose) as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep_alive
    if rc != 0:
        last = next((l for l in reversed(log.read().splitlines()) if l.strip()), "no log")
        raise KimiError(f"{dst}: llama.cpp's quantizer failed for --outtype {outtype} (status {rc}): {last[:200]}")


@contextlib.contextmanager
def _captured_stderr(verbose: bool):
    """llama.cpp logs per tensor on fd 2; keep it for an error message instead of flooding the
    terminal (shown as is with --verbose)."""
    buf = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
    if verbose:
        yield buf
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(buf.fileno(), 2)
        yield buf
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        buf.seek(0)
