"""Run a GGUF in the stock llama.cpp (llama-cpp-python's low-level API) and capture named graph
tensors plus the logits of every position.

How: llama.cpp hands every graph node to the scheduler's eval callback (``cb_eval`` in
``llama_context_params``) twice: once with ``ask=True`` ("do you want this one?") and, if we said
yes, again with ``ask=False`` right after the node was computed, while its buffer still holds it.
Buffers are reused later in the graph, so the data must be copied in that second call.

The tensor is read with ggml's own API (``ggml_get_name``, ``ggml_nbytes``,
``ggml_backend_tensor_get``) taken from the *same* ``libggml-base`` that ``libllama`` is linked
against (``llama_cpp/lib/libggml-base.so.0``): ``llama_cpp._ggml`` may load another file, and
struct pointers from one copy must never go into the other. The fields the API has no getter for
(type, ne, nb) come from a ctypes mirror of ``struct ggml_tensor`` (ggml.h of the pinned commit),
cross-checked against ``ggml_nelements``/``ggml_get_name`` on every read.

Layout: ggml's ``ne = [n_embd, n_tokens, ...]`` is NumPy's ``[..., n_tokens, n_embd]``; every
captured tensor is returned as ``[n_tokens, -1]`` (one sequence, so tokens are the outermost
non-trivial axis of every tensor we ask for).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import KimiError

# The graph labels (cb() names in src/models/kimi-linear.cpp of llama.cpp 0c1e570) worth comparing.
# Per layer they carry a "-N" suffix; the global ones have none.
LAYER_LABELS = (
    "attn_norm",      # RMSNorm(x) * attn_norm.weight
    "kda_g1",         # KDA log-decay gate -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias), [T, H*D]
    "kda_beta",       # KDA beta *before* the sigmoid (b_proj(x)), [T, H]
    "attn_output",    # KDA recurrence output o (before the gated norm), [T, H*D]
    "kda_normed",     # RMSNorm_D(o) * o_norm.weight (before the sigmoid gate)
    "kda_out",        # KDA block output after o_proj
    "mla_out",        # MLA block output after o_proj
    "ffn_inp",        # residual after attention
    "ffn_norm",
    "ffn_moe_topk",   # chosen expert ids [T, k] (int32): routing flips are found from it
    "ffn_moe_out",    # routed experts only (weighted, scaled)
    "ffn_shexp",      # shared expert
    "ffn_out",        # dense FFN, or routed + shared
    "l_out",          # layer output (residual)
)
GLOBAL_LABELS = ("result_norm", "result_output")

# ggml_type values we can turn into numpy (ggml.h enum ggml_type)
_GGML_F32, _GGML_F16, _GGML_I32, _GGML_BF16 = 0, 1, 26, 30
_NP_OF_TYPE = {_GGML_F32: np.float32, _GGML_F16: np.float16, _GGML_I32: np.int32, _GGML_BF16: np.uint16}

_KV_TYPES = {"f32": _GGML_F32, "f16": _GGML_F16}

_MAX_DIMS, _MAX_OP_PARAMS, _MAX_SRC, _MAX_NAME = 4, 64, 10, 64


class _GGMLTensor(ctypes.Structure):
    """Mirror of struct ggml_tensor (ggml/include/ggml.h at llama.cpp 0c1e570)."""
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * _MAX_DIMS),
        ("nb", ctypes.c_size_t * _MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * _MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * _MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _lib_dir() -> Path:
    import llama_cpp.llama_cpp as lc  # loads libllama (and through it, its libggml*)
    return Path(lc._lib._name).resolve().parent


def _ggml_base() -> ctypes.CDLL:
    """libggml-base as libllama loaded it (same file => dlopen returns the same handle)."""
    d = _lib_dir()
    for name in ("libggml-base.so.0", "libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (d / name).exists():
            lib = ctypes.CDLL(str(d / name))
            break
    else:
        raise KimiError(f"{d}: no libggml-base next to libllama")
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


def loaded_ggml_base_files() -> list[str]:
    """Paths of every libggml-base mapped into this process (for the one-copy check in tests)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps.splitlines() if "libggml-base" in line})


def read_tensor(lib: ctypes.CDLL, t: int) -> tuple[str, np.ndarray, tuple[int, ...]]:
    """(name, array in NumPy order, ggml ne) of a computed tensor; handles views and strides."""
    s = _GGMLTensor.from_address(t)
    name = lib.ggml_get_name(t).decode("utf-8", "replace")
    ne = tuple(int(x) for x in s.ne)
    nb = tuple(int(x) for x in s.nb)
    if s.name.decode("utf-8", "replace") != name or lib.ggml_nelements(t) != int(np.prod(ne)):
        raise KimiError(f"ggml_tensor layout mismatch reading '{name}': this ggml is not the pinned one")
    dtype = _NP_OF_TYPE.get(s.type)
    if dtype is None:
        raise KimiError(f"captured tensor '{name}' has ggml type {s.type}, which the capture cannot read")
    nbytes = lib.ggml_nbytes(t)
    raw = np.empty(nbytes, dtype=np.uint8)
    lib.ggml_backend_tensor_get(t, raw.ctypes.data, 0, nbytes)
    itemsize = np.dtype(dtype).itemsize
    if lib.ggml_is_contiguous(t):
        arr = raw.view(dtype).reshape(ne[::-1]).copy()
    else:
        # ggml_nbytes of a strided tensor spans first to last element, so strides index into raw
        arr = np.lib.stride_tricks.as_strided(raw[: nbytes - nbytes % itemsize].view(dtype),
                                              shape=ne[::-1], strides=nb[::-1]).copy()
    if s.type == _GGML_BF16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return name, arr, ne


@dataclass
class Capture:
    """What one llama.cpp forward produced."""
    logits: np.ndarray                               # [T, vocab], float32
    tensors: dict[str, np.ndarray] = field(default_factory=dict)   # label -> [T, -1]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # label -> ggml ne
    order: list[str] = field(default_factory=list)   # labels in graph (compute) order
    bridge_calls: int | None = None                  # KDA nodes our bridge computed (kda="ours")


def default_labels(n_layers: int) -> set[str]:
    return {f"{b}-{i}" for i in range(n_layers) for b in LAYER_LABELS} | set(GLOBAL_LABELS)


_SILENCE = None


def _quiet_logs() -> None:
    """llama.cpp logs every load to stderr; keep the parity output readable."""
    global _SILENCE
    import llama_cpp
    if _SILENCE is None:
        _SILENCE = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_SILENCE, ctypes.c_void_p(0))


def run_llama(gguf_path: str | os.PathLike, ids: Iterable[int], labels: set[str] | None = None,
              n_threads: int | None = None, kda: str = "builtin", verbose: bool = False,
              kv_type: str = "f32", n_ctx: int | None = None, flash_attn: bool | None = None,
              n_gpu_layers: int = 0) -> Capture:
    """Evaluate `ids` as one batch; return logits of every position and the labelled tensors.

    labels: graph names to capture (e.g. "kda_g1-2"); None captures nothing but the logits.
    kda: "builtin" (llama.cpp's own GATED_DELTA_NET) or "ours" (the project's bridge backend).
    kv_type: MLA K/V cache type, "f32" (parity) or "f16" (llama.cpp's default).
    flash_attn: None lets llama.cpp choose (auto: on for the CPU), False/True force it; the two MLA
    attention paths round differently, so parity can check both.
    n_gpu_layers: layers offloaded in a llama-cpp-python built with CUDA (-1: all); with kda="ours"
    the bridge's GPU device then runs the KDA nodes.
    """
    if kv_type not in _KV_TYPES:
        raise KimiError(f"kv cache type must be one of {', '.join(_KV_TYPES)}, got '{kv_type}'")
    import llama_cpp

    path = Path(gguf_path)
    if not path.is_file():
        raise KimiError(f"{path}: no such GGUF file")
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise KimiError("token ids must be a non-empty 1-D sequence")
    if kda == "ours":
        from ..ggml_ops import bridge  # registers our backend before the model loads

        bridge.enable_bridge(gpu=n_gpu_layers != 0)
        bridge.reset_stats()
    elif kda == "builtin":
        import sys

        if "kimi_gguf.ggml_ops.bridge" in sys.modules:  # registered earlier in this process: stand it down
            sys.modules["kimi_gguf.ggml_ops.bridge"].disable_bridge()
    else:
        raise KimiError(f"--kda must be 'ours' or 'builtin', got '{kda}'")
    if not verbose:
        _quiet_logs()
    llama_cpp.llama_backend_init()
    lib = _ggml_base()
    wanted = set(labels or ())
    cap = Capture(logits=np.empty((0, 0), np.float32))
    error: list[BaseException] = []

    def on_eval(t, ask, _user):
        try:
            name = lib.ggml_get_name(t).decode("utf-8", "replace")
            if ask:
                return name in wanted
            if name in wanted:
                name, arr, ne = read_tensor(lib, t)
                if name in cap.tensors:  # a label used twice: the later node is the one the model uses
                    cap.order.remove(name)
                cap.tensors[name] = arr
                cap.shapes[name] = ne
                cap.order.append(name)
            return True
        except BaseException as exc:  # never let an exception cross into C
            error.append(exc)
            return False  # makes llama_decode abort

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_eval)

    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu_layers
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise KimiError(f"{path}: llama.cpp could not load this GGUF (run with --verbose for its log)")
    ctx = None
    batch = None
    try:
        n = int(ids.size)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = max(n, n_ctx or 16)
        cparams.n_batch = cparams.n_ubatch = max(n, 16)  # one ubatch: one graph, one capture per label
        cparams.n_seq_max = 1
        threads = n_threads or min(8, os.cpu_count() or 1)
        cparams.n_threads = cparams.n_threads_batch = threads
        # f32 K/V cache: the default f16 cache rounds MLA keys and values (~1e-3), which would hide
        # real divergences behind storage noise. Quality runs may ask for f16 to match deployment.
        cparams.type_k = cparams.type_v = _KV_TYPES[kv_type]
        if flash_attn is not None:
            cparams.flash_attn_type = 1 if flash_attn else 0
        cparams.cb_eval = callback
        cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise KimiError(f"{path}: llama.cpp could not create a context for {n} tokens")
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        if ids.min() < 0 or ids.max() >= n_vocab:
            raise KimiError(f"token ids must lie in [0, {n_vocab}) for {path.name}; got {ids.min()}..{ids.max()}")
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        batch.n_tokens = n
        for i, tok in enumerate(ids):
            batch.token[i] = int(tok)
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        rc = llama_cpp.llama_decode(ctx, batch)
        if error:
            raise error[0]
        if rc != 0:
            raise KimiError(f"{path}: llama_decode failed with code {rc}")
        ptr = llama_cpp.llama_get_logits(ctx)
        cap.logits = np.ctypeslib.as_array(ptr, shape=(n * n_vocab,)).reshape(n, n_vocab).copy()
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    if kda == "ours":
        from ..ggml_ops import bridge

        cap.bridge_calls = bridge.stats().calls
        if not cap.bridge_calls:  # every bridge failure falls back to the builtin op silently
            raise KimiError("--kda ours: the bridge is registered but computed no KDA node")
    n = int(ids.size)
    for k, v in list(cap.tensors.items()):
        cap.tensors[k] = v.reshape(n, -1) if v.size % n == 0 else v
    return cap

