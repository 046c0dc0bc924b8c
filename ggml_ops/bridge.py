"""Enable the llama.cpp bridge: llama.cpp's KDA op runs on this project's kernels.

Call `enable_bridge()` once, before creating a `llama_cpp.Llama`; that Llama (and the server, which
builds its Llama the same way) then computes every KDA layer in the bridge backend. Everything else
(weights, caches, other ops) stays with the stock CPU backend.

Why registering is done this way: the bridge must join the backend registry of the libggml that
libllama uses, `llama_cpp/lib/libggml.so.0`. `llama_cpp._ggml` loads `lib/libggml.so`, a separate
copy with its own registry, where registering would silently do nothing; so we load the `.so.0` by
path, call its `ggml_backend_load`, and then confirm through libllama itself
(`llama_print_system_info`) that the backend is visible.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
from typing import Optional

from kimi_gguf.errors import KimiError

BACKEND_NAME = "KIMI_KDA"
LIB_NAME = "libkimi_kda_bridge.so"
_ERR_LEN = 512

_REPO = pathlib.Path(__file__).resolve().parent.parent
_state: dict = {"lib": None, "path": None, "registered": False}


@dataclasses.dataclass(frozen=True)
class BridgeStats:
    calls: int      # GATED_DELTA_NET nodes computed by the bridge
    seconds: float  # wall time inside our kernel
    tokens: int     # sum of T * n_seqs over those calls

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_library(path: Optional[str] = None) -> pathlib.Path:
    """The bridge .so: an explicit path, else $KIMI_BRIDGE_LIB, else the CMake build folder (`make ops`)."""
    explicit = path or os.environ.get("KIMI_BRIDGE_LIB")
    if explicit:
        if not pathlib.Path(explicit).is_file():
            raise KimiError(f"{explicit}: bridge library not found")
        return pathlib.Path(explicit).resolve()
    built = _REPO / "build" / "ggml_ops" / "bridge" / LIB_NAME
    if not built.is_file():
        raise KimiError(f"{built}: bridge library not found; run `make ops`")
    return built


def _libggml_of_libllama() -> ctypes.CDLL:
    import llama_cpp  # loads libllama and, through its RUNPATH, llama_cpp/lib/libggml.so.0

    lib_dir = pathlib.Path(llama_cpp.__file__).resolve().parent / "lib"
    so = lib_dir / "libggml.so.0"
    if not so.is_file():
        raise KimiError(f"{so}: not found; the bridge needs the libggml that libllama loads")
    # Same file as libllama's dependency, so dlopen returns the copy already in the process.
    return ctypes.CDLL(str(so))


def _bind(lib: ctypes.CDLL) -> None:
    c = ctypes
    lib.kimi_bridge_built_commit.restype = c.c_char_p
    lib.kimi_bridge_built_version.restype = c.c_char_p
    lib.kimi_bridge_check_version.argtypes = [c.c_char_p, c.c_char_p, c.c_size_t]
    lib.kimi_bridge_check_version.restype = c.c_int
    lib.kimi_bridge_selftest.argtypes = [c.c_char_p, c.c_size_t]
    lib.kimi_bridge_selftest.restype = c.c_int
    lib.kimi_bridge_stats.argtypes = [c.POINTER(c.c_int64)] * 3
    lib.kimi_bridge_stats.restype = None
    lib.kimi_bridge_reset_stats.restype = None
    lib.kimi_bridge_set_corrupt.argtypes = [c.c_int]
    lib.kimi_bridge_set_enabled.argtypes = [c.c_int]
    lib.kimi_bridge_last_error.restype = c.c_char_p
    lib.kimi_bridge_set_delegate.argtypes = [c.c_int]
    lib.kimi_bridge_last_n_threads.restype = c.c_int
    lib.kimi_bridge_set_algo.argtypes = [c.c_int]
    lib.kimi_bridge_set_algo.restype = c.c_int


def _load(path: Optional[str]) -> ctypes.CDLL:
    if _state["lib"] is None:
        _libggml_of_libllama()  # the bridge's libggml.so.0 dependency must resolve to libllama's copy
        so = find_library(path)
        lib = ctypes.CDLL(str(so))
        _bind(lib)
        _state["lib"], _state["path"] = lib, so
    return _state["lib"]


def enable_bridge(path: Optional[str] = None, *, _expect_commit: Optional[str] = None) -> pathlib.Path:
    """Register the bridge backend in libllama's ggml (idempotent). Raises KimiError when refused.

    `_expect_commit` replaces the compiled-in ggml commit in the version guard (tests use it to
    prove a mismatch is refused); leave it None.
    """
    lib = _load(path)
    err = ctypes.create_string_buffer(_ERR_LEN)
    expect = _expect_commit.encode() if _expect_commit is not None else None
    if lib.kimi_bridge_check_version(expect, err, _ERR_LEN) != 0:
        raise KimiError(err.value.decode())
    if _state["registered"]:
        lib.kimi_bridge_set_enabled(1)
        return _state["path"]
    if lib.kimi_bridge_selftest(err, _ERR_LEN) != 0:
        raise KimiError(err.value.decode())

    libggml = _libggml_of_libllama()
    libggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    libggml.ggml_backend_load.restype = ctypes.c_void_p
    if not libggml.ggml_backend_load(str(_state["path"]).encode()):
        raise KimiError(f"{_state['path']}: ggml_backend_load refused the bridge (see ggml's log above)")
    _state["registered"] = True
    lib.kimi_bridge_set_enabled(1)

    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if BACKEND_NAME not in info:
        raise KimiError(f"{_state['path']}: registered, but libllama does not list {BACKEND_NAME} "
                        f"(loaded into a different libggml?): {info.strip()}")
    return _state["path"]


def disable_bridge() -> None:
    """Stop claiming the op: contexts/graphs built afterwards use llama.cpp's builtin KDA."""
    if _state["lib"] is not None:
        _state["lib"].kimi_bridge_set_enabled(0)


def is_registered() -> bool:
    return bool(_state["registered"])


def stats() -> BridgeStats:
    lib = _state["lib"]
    if lib is None:
        return BridgeStats(0, 0.0, 0)
    calls, ns, tokens = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    lib.kimi_bridge_stats(ctypes.byref(calls), ctypes.byref(ns), ctypes.byref(tokens))
    return BridgeStats(calls.value, ns.value / 1e9, tokens.value)


def reset_stats() -> None:
    if _state["lib"] is not None:
        _state["lib"].kimi_bridge_reset_stats()


def set_corrupt(on: bool) -> None:
    """Debug: add 0.5 to every attention output the bridge writes (proves its result is used)."""
    _load(None).kimi_bridge_set_corrupt(1 if on else 0)


def set_delegate(on: bool) -> None:
    """Benchmarks/tests: nodes the bridge claims are computed by ggml's own CPU op (timed in stats())."""
    _load(None).kimi_bridge_set_delegate(1 if on else 0)


ALGOS = {"auto": 0, "recurrent": 1, "chunked": 2}


def set_algo(name: str) -> None:
    """Kernel algorithm for nodes computed from now on: auto (default), recurrent or chunked."""
    if name not in ALGOS or _load(None).kimi_bridge_set_algo(ALGOS[name]) != 0:
        raise KimiError(f"bridge algorithm {name!r}: expected one of {sorted(ALGOS)}")


def last_n_threads() -> int:
    """Threads the bridge used for its last node (llama.cpp passes n_threads / n_threads_batch)."""
    lib = _state["lib"]
    return int(lib.kimi_bridge_last_n_threads()) if lib is not None else 0


def last_error() -> str:
    lib = _state["lib"]
    return lib.kimi_bridge_last_error().decode() if lib is not None else ""


def built_for() -> tuple[str, str]:
    """(commit, version) of the ggml the loaded bridge was compiled against."""
    lib = _load(None)
    return lib.kimi_bridge_built_commit().decode(), lib.kimi_bridge_built_version().decode()
