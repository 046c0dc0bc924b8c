"""cffi (ABI mode) binding of libkimi_kda.so: declarations and library lookup, nothing else.

The library is found, in order, at $KIMI_GGUF_OPS_LIB or under the build tree `make ops` writes
(<repo>/build/ggml_ops/libkimi_kda.so). It links the libggml*.so.0 in llama_cpp/lib -- the copy
libllama uses -- so loading it never brings a second ggml into the process.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from cffi import FFI

from kimi_gguf.errors import KimiError

CDEF = """
typedef enum {
    KIMI_KDA_OK = 0, KIMI_KDA_ERR_NULL = 1, KIMI_KDA_ERR_SHAPE = 2, KIMI_KDA_ERR_STRIDE = 3,
    KIMI_KDA_ERR_TYPE = 4, KIMI_KDA_ERR_ARG = 5, KIMI_KDA_ERR_BACKEND = 6, KIMI_KDA_ERR_NOMEM = 7,
} kimi_kda_status;
typedef enum { KIMI_KDA_ALGO_AUTO = 0, KIMI_KDA_ALGO_RECURRENT = 1, KIMI_KDA_ALGO_CHUNKED = 2 } kimi_kda_algo;
typedef struct { const float * data; int64_t ne[4]; size_t nb[4]; } kimi_kda_tensor;
typedef struct {
    kimi_kda_tensor q, k, v, g, beta, state;
    float *         dst;
    int64_t         n_snapshots;
    kimi_kda_algo   algo;
} kimi_kda_params;

int kimi_kda_check(const kimi_kda_params * p, char * err, size_t err_len);
int64_t kimi_kda_dst_size(const kimi_kda_params * p);
int kimi_kda_forward_cpu(const kimi_kda_params * p, int ith, int nth, char * err, size_t err_len);
int kimi_kda_forward_cpu_threads(const kimi_kda_params * p, int n_threads, char * err, size_t err_len);
kimi_kda_algo kimi_kda_resolve_algo(const kimi_kda_params * p);
const char * kimi_kda_cpu_isa(void);
int kimi_kda_force_isa(const char * name);
int kimi_kda_forward_cuda(const kimi_kda_params * p, void * stream, char * err, size_t err_len);
int kimi_kda_has_cuda(void);

typedef enum { KIMI_KDA_IMPL_OURS = 0, KIMI_KDA_IMPL_BUILTIN = 1 } kimi_kda_impl;
typedef struct kimi_kda_graph kimi_kda_graph;
int  kimi_kda_graph_new(const kimi_kda_params * p, int impl, int n_threads, kimi_kda_graph ** out,
                        char * err, size_t err_len);
int  kimi_kda_graph_compute(kimi_kda_graph * gr, int n_iter, char * err, size_t err_len);
void kimi_kda_graph_free(kimi_kda_graph * gr);
int  kimi_kda_eval_ggml(const kimi_kda_params * p, int impl, int n_threads, char * err, size_t err_len);
"""

ERR_LEN = 256
ERROR_NAMES = {0: "ok", 1: "null pointer", 2: "shape", 3: "stride", 4: "type", 5: "argument",
               6: "backend", 7: "out of memory"}

ffi = FFI()
ffi.cdef(CDEF)

_lib = None
_lock = threading.Lock()


def library_path() -> Path:
    env = os.environ.get("KIMI_GGUF_OPS_LIB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "build" / "ggml_ops" / "libkimi_kda.so"


def lib():
    """The loaded library (loaded once per process)."""
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            if not path.is_file():
                raise KimiError(f"KDA ops library not found at {path}: run `make ops` "
                                "(or set KIMI_GGUF_OPS_LIB)")
            _lib = ffi.dlopen(str(path))
        return _lib


class KdaOpError(KimiError):
    """A non-zero status from the C library; `.code` is the kimi_kda_status value."""

    def __init__(self, code: int, message: str):
        super().__init__(f"kda op: {message or ERROR_NAMES.get(code, 'error')} "
                         f"(code {code}: {ERROR_NAMES.get(code, '?')})")
        self.code = code


def check(rc: int, err) -> None:
    if rc != 0:
        raise KdaOpError(rc, ffi.string(err).decode(errors="replace"))
