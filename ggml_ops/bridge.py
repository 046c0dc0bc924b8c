"""Enable the llama.cpp bridge: llama.cpp's KDA op runs on this project's kernels.

Call `enable_bridge()` once, before creating a `llama_cpp.Llama`; that Llama (and the server, which
builds its Llama the same way) then computes every KDA layer in the bridge backend. Everything else
(weights, caches, other ops) stays with ggml's own backends: CPU, or CUDA when llama-cpp-python was
built with CUDA and the model is offloaded (n_gpu_layers != 0; see the GPU section below).

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
_state: dict = {"lib": None, "path": None, "registered": False, "enabled": False, "gpu": False}


@dataclasses.dataclass(frozen=True)
class BridgeStats:
    calls: int      # GATED_DELTA_NET nodes computed by the bridge
    seconds: float  # wall time inside our kernel
    tokens: int     # sum of T * n_seqs over those calls
    gpu_calls: int = 0  # of those calls, the ones on a GPU device (CUDA)
    verify_nodes: int = 0        # verify mode: nodes also computed by ggml's own op
    verify_max_rel: float = 0.0  # ... and the worst relative difference of ours vs ggml's op

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
    """ctypes types of kimi_bridge.h's entry points (tests/test_binding_decls.py checks them)."""
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
    lib.kimi_bridge_gpu_calls.restype = c.c_int64
    lib.kimi_bridge_set_corrupt.argtypes = [c.c_int]
    lib.kimi_bridge_set_corrupt.restype = None
    lib.kimi_bridge_set_enabled.argtypes = [c.c_int]
    lib.kimi_bridge_set_enabled.restype = None
    lib.kimi_bridge_last_error.restype = c.c_char_p
    lib.kimi_bridge_set_delegate.argtypes = [c.c_int]
    lib.kimi_bridge_set_delegate.restype = None
    lib.kimi_bridge_last_n_threads.restype = c.c_int
    lib.kimi_bridge_set_algo.argtypes = [c.c_int]
    lib.kimi_bridge_set_algo.restype = c.c_int
    lib.kimi_bridge_gpu_device_count.restype = c.c_int
    lib.kimi_bridge_gpu_device_name.argtypes = [c.c_int]
    lib.kimi_bridge_gpu_device_name.restype = c.c_char_p
    lib.kimi_bridge_set_cuda_math.argtypes = [c.c_int]
    lib.kimi_bridge_set_cuda_math.restype = None
    lib.kimi_bridge_set_verify.argtypes = [c.c_int]
    lib.kimi_bridge_set_verify.restype = None
    lib.kimi_bridge_verify_stats.argtypes = [c.POINTER(c.c_int64), c.POINTER(c.c_double)]
    lib.kimi_bridge_verify_stats.restype = None


def _load(path: Optional[str]) -> ctypes.CDLL:
    if _state["lib"] is None:
        _libggml_of_libllama()  # the bridge's libggml.so.0 dependency must resolve to libllama's copy
        so = find_library(path)
        lib = ctypes.CDLL(str(so))
        _bind(lib)
        _state["lib"], _state["path"] = lib, so
    return _state["lib"]


def enable_bridge(path: Optional[str] = None, *, gpu: Optional[bool] = None,
                  _expect_commit: Optional[str] = None) -> pathlib.Path:
    """Register the bridge backend in libllama's ggml (idempotent). Raises KimiError when refused.

    gpu: also run the KDA op of offloaded layers on our CUDA kernels (the GPU device, see below).
    Off unless asked for, here or with KIMI_BRIDGE_GPU=1: our kernel is faster than llama.cpp's
    CUDA op, but taking the op out of ggml-cuda splits the GPU graph at every KDA layer; on an H100
    prompts gain 6-11% and generation loses 5-11% (BENCHMARKS.md, Bridge). None keeps the current
    choice (initially the environment's).
    `_expect_commit` replaces the compiled-in ggml commit in the version guard (tests use it to
    prove a mismatch is refused); leave it None.
    """
    if gpu is not None:
        _state["gpu"] = bool(gpu)
    elif not _state["registered"]:
        _state["gpu"] = os.environ.get("KIMI_BRIDGE_GPU", "0") not in ("", "0")
    lib = _load(path)
    err = ctypes.create_string_buffer(_ERR_LEN)
    expect = _expect_commit.encode() if _expect_commit is not None else None
    if lib.kimi_bridge_check_version(expect, err, _ERR_LEN) != 0:
        raise KimiError(err.value.decode())
    if _state["registered"]:
        lib.kimi_bridge_set_enabled(1)
        _state["enabled"] = True
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
    _state["enabled"] = True

    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if BACKEND_NAME not in info:
        raise KimiError(f"{_state['path']}: registered, but libllama does not list {BACKEND_NAME} "
                        f"(loaded into a different libggml?): {info.strip()}")
    if gpu_devices():
        _hook_model_loading()
    return _state["path"]


# ---------------------------------------------------------------------------------------------
# GPU: a llama-cpp-python built with CUDA. The bridge then also has one GPU device per CUDA
# device ("KIMI_KDA_CUDA0", ...). llama.cpp's scheduler hands a KDA node to it only when it comes
# BEFORE its CUDA device in the model's device list (higher priority, same buffers), and llama.cpp's
# default list leaves it out (same PCI id as the CUDA device). The only place to put it first is
# llama_model_params.devices, which the high-level Llama and the server never set; so after
# registration, model loading goes through _load_with_bridge, which fills that list in -- only when
# the GPU device was asked for (enable_bridge(gpu=True) / KIMI_BRIDGE_GPU=1): splitting ggml-cuda's
# graph at each KDA node costs generation more than our faster kernel saves (BENCHMARKS.md, Bridge).

def gpu_devices() -> list[str]:
    """Names of the bridge's GPU devices (empty without CUDA)."""
    lib = _state["lib"]
    if lib is None or not _state["registered"]:
        return []
    return [lib.kimi_bridge_gpu_device_name(i).decode() for i in range(lib.kimi_bridge_gpu_device_count())]


_LOAD_HOOK: dict = {"orig": None, "keep": []}
_SPLIT_NONE, _SPLIT_LAYER = 0, 1  # enum llama_split_mode


def model_devices(split_mode: int = _SPLIT_LAYER, main_gpu: int = 0):
    """NULL-terminated ggml_backend_dev_t array [KIMI_KDA_CUDA<i>, CUDA<i>, ...] for
    llama_model_params.devices; None when the bridge has no GPU device, is disabled or was enabled
    without gpu=True, or the split mode is one the bridge does not serve (row/tensor split)."""
    names = gpu_devices()
    lib = _state["lib"]
    if (not names or lib is None or not _state["enabled"] or not _state["gpu"]
            or split_mode not in (_SPLIT_NONE, _SPLIT_LAYER)):
        return None
    libggml = _libggml_of_libllama()
    libggml.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    libggml.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    pairs = []
    for name in names:
        cuda = name[len(BACKEND_NAME) + 1:]  # KIMI_KDA_CUDA0 -> CUDA0
        ours, theirs = libggml.ggml_backend_dev_by_name(name.encode()), libggml.ggml_backend_dev_by_name(cuda.encode())
        if ours and theirs:
            pairs.append((ours, theirs))
    if split_mode == _SPLIT_NONE:  # one GPU: main_gpu's pair only
        pairs = pairs[main_gpu:main_gpu + 1] if 0 <= main_gpu < len(pairs) else []
    if not pairs:
        return None
    arr = (ctypes.c_void_p * (2 * len(pairs) + 1))(*[d for pair in pairs for d in pair], None)
    _LOAD_HOOK["keep"].append(arr)  # llama.cpp reads it during loading only; keep it alive anyway
    return arr


def _load_with_bridge(path_model, params):
    # Also with n_gpu_layers == 0: a CUDA llama.cpp then still runs big batches' matrix products on
    # the GPU (op offload) and the scheduler pulls the KDA node next to them, onto CUDA0.
    if not params.devices and _state["lib"] is not None:
        devs = model_devices(params.split_mode, params.main_gpu)
        if devs is not None:
            params.devices = ctypes.cast(devs, ctypes.c_void_p)
            params.split_mode = _SPLIT_LAYER  # our device gets no layer, so this is still one GPU
    return _LOAD_HOOK["orig"](path_model, params)


def _hook_model_loading() -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as low

    if _LOAD_HOOK["orig"] is None:
        _LOAD_HOOK["orig"] = low.llama_model_load_from_file
        # llama.py/_internals.py call it through the module, user code often through the package
        low.llama_model_load_from_file = _load_with_bridge
        llama_cpp.llama_model_load_from_file = _load_with_bridge


CUDA_MATHS = {"default": -1, "fp32": 0, "tf32x3": 1, "tf32": 2, "bf16": 3, "f16": 4}  # kimi_kda_cuda_math


def set_cuda_math(name: str) -> None:
    """Math of the CUDA chunked kernel for nodes computed from now on (default: 3xtf32, fp32-level)."""
    if name not in CUDA_MATHS:
        raise KimiError(f"bridge CUDA math {name!r}: expected one of {sorted(CUDA_MATHS)}")
    _load(None).kimi_bridge_set_cuda_math(CUDA_MATHS[name])


def disable_bridge() -> None:
    """Stop claiming the op: contexts/graphs built afterwards use llama.cpp's builtin KDA."""
    if _state["lib"] is not None:
        _state["lib"].kimi_bridge_set_enabled(0)
    _state["enabled"] = False


def is_registered() -> bool:
    return bool(_state["registered"])


def stats() -> BridgeStats:
    lib = _state["lib"]
    if lib is None:
        return BridgeStats(0, 0.0, 0)
    calls, ns, tokens = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    lib.kimi_bridge_stats(ctypes.byref(calls), ctypes.byref(ns), ctypes.byref(tokens))
    v_nodes, v_rel = ctypes.c_int64(), ctypes.c_double()
    lib.kimi_bridge_verify_stats(ctypes.byref(v_nodes), ctypes.byref(v_rel))
    return BridgeStats(calls.value, ns.value / 1e9, tokens.value, int(lib.kimi_bridge_gpu_calls()),
                       v_nodes.value, v_rel.value)


def reset_stats() -> None:
    if _state["lib"] is not None:
        _state["lib"].kimi_bridge_reset_stats()


def set_corrupt(on: bool) -> None:
    """Debug: add 0.5 to every attention output the bridge writes (proves its result is used)."""
    _load(None).kimi_bridge_set_corrupt(1 if on else 0)


def set_delegate(on: bool) -> None:
    """Benchmarks/tests: nodes the bridge claims are computed by ggml's own CPU op (timed in stats())."""
    _load(None).kimi_bridge_set_delegate(1 if on else 0)


def set_verify(on: bool) -> None:
    """Tests: every node the bridge computes is also computed by ggml's own op (CPU or CUDA) on the
    same inputs; stats() then counts the nodes and the worst relative difference (slow)."""
    _load(None).kimi_bridge_set_verify(1 if on else 0)


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
