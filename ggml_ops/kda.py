"""NumPy front end of the KDA op (libkimi_kda.so through cffi).

Two layouts:

* ggml layout (`kda_ggml`): arrays whose reversed shape is the ggml `ne` -- q, k [n_seqs, T, H_k, S];
  v, g [n_seqs, T, H, S]; beta [n_seqs, T, H, 1] (or [n_seqs, T, H]); state [n_seqs, H, S(j), S(i)]
  (ggml's transposed state). Returns the op's output split into attention [n_seqs, T, H, S] and
  K state slots [K, n_seqs, H, S(j), S(i)]. Views with a contiguous last axis are passed as they
  are (byte strides), so permuted inputs exercise the strided path.
* FLA layout (`kda_fla`): flash-linear-attention's q, k [B, T, H, K], v [B, T, H, V], g, beta,
  initial_state [B, H, K, V]; returns (o [B, T, H, V], final_state [B, H, K, V]).

Implementations: "c" (the plain C API on POSIX threads), "ggml" (our custom-op graph node on ggml's
thread pool), "builtin" (llama.cpp's own ggml_gated_delta_net on the same ggml library).
"""
from __future__ import annotations

import os

import numpy as np

from kimi_gguf.errors import KimiError

from ._binding import ERR_LEN, check, ffi, lib

ALGOS = {"auto": 0, "recurrent": 1, "chunked": 2}
IMPLS = ("c", "ggml", "builtin")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _as_f32(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":  # complex would drop its imaginary part, objects/strings mean a mix-up
        raise KimiError(f"kda op: {name} has dtype {a.dtype}, need real numbers (float32 preferred)")
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if a.ndim != 4:
        raise KimiError(f"kda op: {name} must be 4-D (numpy order of ggml's ne reversed), got shape {a.shape}")
    if a.shape[-1] > 1 and a.strides[-1] != 4 or any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    return a


def _fill_tensor(t, a: np.ndarray, keep: list) -> None:
    keep.append(a)
    t.data = ffi.cast("const float *", a.ctypes.data)
    for i in range(4):
        t.ne[i] = a.shape[3 - i]
        # ggml's nb[0] is the element size even for a length-1 row.
        t.nb[i] = a.strides[3 - i] if not (i == 0 and a.shape[3] == 1) else 4


class Problem:
    """Inputs marshalled into a kimi_kda_params (the numpy arrays are kept alive here)."""

    def __init__(self, q, k, v, g, beta, state, n_snapshots=1, algo="auto", dst=None):
        if algo not in ALGOS:
            raise KimiError(f"kda op: algo must be one of {sorted(ALGOS)}, got {algo!r}")
        beta = np.asarray(beta)
        if beta.ndim == 3:
            beta = beta[..., None]
        arrs = {n: _as_f32(n, a) for n, a in
                dict(q=q, k=k, v=v, g=g, beta=beta, state=state).items()}
        self.keep: list = []
        self.p = ffi.new("kimi_kda_params *")
        for n, a in arrs.items():
            _fill_tensor(getattr(self.p, n), a, self.keep)
        self.p.n_snapshots = int(n_snapshots)
        self.p.algo = ALGOS[algo]
        S, H, T, B = (arrs["v"].shape[3], arrs["v"].shape[2], arrs["v"].shape[1], arrs["v"].shape[0])
        self.dims = (S, H, T, B, int(n_snapshots))
        n = lib().kimi_kda_dst_size(self.p)
        if n < 0:
            # No valid output size: let the validator name the problem (dst stand-in, never written).
            err = ffi.new("char[]", ERR_LEN)
            stand_in = ffi.new("float[1]")
            self.p.dst = stand_in
            check(lib().kimi_kda_check(self.p, err, ERR_LEN) or 2, err)
        if dst is None:
            dst = np.zeros(n, dtype=np.float32)
        elif dst.dtype != np.float32 or dst.size != n or not dst.flags.c_contiguous:
            raise KimiError(f"kda op: dst must be a contiguous float32 array of {n} elements")
        self.dst = dst
        self.p.dst = ffi.cast("float *", dst.ctypes.data)

    def split(self):
        """(attention [B, T, H, S], states [K, B, H, S, S]) views of dst."""
        S, H, T, B, K = self.dims
        n_attn = S * H * T * B
        return (self.dst[:n_attn].reshape(B, T, H, S),
                self.dst[n_attn:].reshape(K, B, H, S, S))

    def run(self, impl="c", n_threads=None):
        n_threads = default_threads() if n_threads is None else int(n_threads)
        err = ffi.new("char[]", ERR_LEN)
        L = lib()
        if impl == "c":
            rc = L.kimi_kda_forward_cpu_threads(self.p, n_threads, err, ERR_LEN)
        elif impl == "ggml":
            rc = L.kimi_kda_eval_ggml(self.p, 0, n_threads, err, ERR_LEN)
        elif impl == "builtin":
            rc = L.kimi_kda_eval_ggml(self.p, 1, n_threads, err, ERR_LEN)
        else:
            raise KimiError(f"kda op: impl must be one of {IMPLS}, got {impl!r}")
        check(rc, err)
        return self.split()


def kda_ggml(q, k, v, g, beta, state, n_snapshots=1, algo="auto", impl="c", n_threads=None):
    """Run the op on ggml-layout arrays; returns (attention, state slots) as fresh arrays."""
    prob = Problem(q, k, v, g, beta, state, n_snapshots, algo)
    attn, states = prob.run(impl, n_threads)
    return attn.copy(), states.copy()


def resolve_algo(T: int, algo: str = "auto") -> str:
    """Which algorithm `auto` picks for T tokens (asks the library)."""
    p = ffi.new("kimi_kda_params *")
    p.v.ne[2] = T
    p.algo = ALGOS[algo]
    return {1: "recurrent", 2: "chunked"}[lib().kimi_kda_resolve_algo(p)]


def cpu_isa() -> str:
    return ffi.string(lib().kimi_kda_cpu_isa()).decode()


def force_isa(name: str | None) -> None:
    """Testing aid: run the generic / avx2 / avx512 kernels (None = automatic)."""
    if lib().kimi_kda_force_isa(ffi.NULL if not name else name.encode()) != 0:
        raise KimiError(f"kda op: instruction set {name!r} unknown or not supported by this CPU")


def fla_to_ggml(q, k, v, g, beta, scale=None, initial_state=None):
    """FLA-layout arrays -> ggml-layout arrays (views where possible)."""
    q, k, v, g = (np.asarray(a, dtype=np.float32) for a in (q, k, v, g))
    beta = np.asarray(beta, dtype=np.float32)
    if q.ndim != 4:
        raise KimiError(f"kda: q must be [B, T, H, K], got shape {q.shape}")
    Bq, T, Hq, Kd = q.shape
    if v.ndim != 4:
        raise KimiError(f"kda: v must be [B, T, H, V], got shape {v.shape}")
    B, _, H, Vd = v.shape
    if Vd != Kd:
        raise KimiError(f"kda: the ggml op needs K == V (head dims), got K={Kd}, V={Vd}")
    # q/k may have fewer heads (tiled broadcast) or sequences (blocked broadcast), as in ggml.
    if H % Hq or B % Bq:
        raise KimiError(f"kda: q has shape {q.shape}; its heads/batch must divide v's {v.shape}")
    for name, a, shape in (("k", k, q.shape), ("v", v, (B, T, H, Vd)), ("g", g, (B, T, H, Kd)),
                           ("beta", beta, (B, T, H))):
        if a.shape != shape:
            raise KimiError(f"kda: {name} has shape {a.shape}, expected {shape}")
    if scale is not None and float(scale) != Kd ** -0.5:
        # The op applies 1/sqrt(S_v); any other scale is folded into q.
        q = q * np.float32(float(scale) * Kd ** 0.5)
    if initial_state is None:
        state = np.zeros((B, H, Vd, Kd), dtype=np.float32)
    else:
        s0 = np.asarray(initial_state, dtype=np.float32)
        if s0.shape != (B, H, Kd, Vd):
            raise KimiError(f"kda: initial_state has shape {s0.shape}, expected {(B, H, Kd, Vd)}")
        state = np.ascontiguousarray(np.swapaxes(s0, -1, -2))
    return q, k, v, g, beta[..., None], state


def kda_fla(q, k, v, g, beta, scale=None, initial_state=None, algo="auto", backend="cpu",
            n_threads=None):
    """FLA-layout KDA through the op: (o [B, T, H, V] float32, final_state [B, H, K, V] float32)."""
    args = fla_to_ggml(q, k, v, g, beta, scale, initial_state)
    if backend == "cpu":
        attn, states = kda_ggml(*args, n_snapshots=1, algo=algo, impl="c", n_threads=n_threads)
    elif backend == "cuda":
        attn, states = kda_ggml_cuda(*args, n_snapshots=1, algo=algo)
    else:
        raise KimiError(f"kda: backend must be cpu or cuda, got {backend!r}")
    return attn, np.ascontiguousarray(np.swapaxes(states[0], -1, -2))


class Graph:
    """A prepared one-node ggml graph (ours: impl "ggml"; llama.cpp's: impl "builtin") over a
    Problem's buffers, with its own ggml thread pool; compute(n) runs it n times. For timing."""

    def __init__(self, prob: Problem, impl: str, n_threads: int):
        if impl not in ("ggml", "builtin"):
            raise KimiError(f"kda graph: impl must be ggml or builtin, got {impl!r}")
        self.prob = prob
        self._err = ffi.new("char[]", ERR_LEN)
        out = ffi.new("kimi_kda_graph **")
        check(lib().kimi_kda_graph_new(prob.p, 0 if impl == "ggml" else 1, int(n_threads), out,
                                       self._err, ERR_LEN), self._err)
        self._g = ffi.gc(out[0], lib().kimi_kda_graph_free)

    def compute(self, n: int = 1) -> None:
        check(lib().kimi_kda_graph_compute(self._g, int(n), self._err, ERR_LEN), self._err)


def kda_ggml_cuda(q, k, v, g, beta, state, n_snapshots=1, algo="auto"):
    """The CUDA op (kimi_kda_forward_cuda) on ggml-layout host arrays: copies to the current torch
    CUDA device, runs on torch's current stream, copies back. (attention, state slots) like kda_ggml."""
    if not lib().kimi_kda_has_cuda():
        raise KimiError("kda op: this libkimi_kda was built without CUDA (nvcc not found at `make ops`)")
    try:
        import torch
    except ImportError:
        raise KimiError("kda op: --backend cuda needs torch with CUDA") from None
    if not torch.cuda.is_available():
        raise KimiError("kda op: no CUDA device visible to torch")
    beta = np.asarray(beta)
    if beta.ndim == 3:
        beta = beta[..., None]
    dev = torch.device("cuda")
    host = dict(q=q, k=k, v=v, g=g, beta=beta, state=state)
    tens = {n: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32))).to(dev)
            for n, a in host.items()}
    p = ffi.new("kimi_kda_params *")
    for n, t in tens.items():
        d = getattr(p, n)
        d.data = ffi.cast("const float *", t.data_ptr())
        for i in range(4):
            d.ne[i] = t.shape[3 - i]
            d.nb[i] = t.stride(3 - i) * 4 if not (i == 0 and t.shape[3] == 1) else 4
    p.n_snapshots = int(n_snapshots)
    p.algo = ALGOS[algo]
    n = lib().kimi_kda_dst_size(p)
    if n < 0:
        raise KimiError("kda op: invalid shapes for the CUDA op")
    out = torch.zeros(n, dtype=torch.float32, device=dev)
    p.dst = ffi.cast("float *", out.data_ptr())
    err = ffi.new("char[]", ERR_LEN)
    stream = ffi.cast("void *", torch.cuda.current_stream().cuda_stream)
    check(lib().kimi_kda_forward_cuda(p, stream, err, ERR_LEN), err)
    torch.cuda.synchronize()
    dst = out.cpu().numpy()
    S, H, T, B = tens["v"].shape[3], tens["v"].shape[2], tens["v"].shape[1], tens["v"].shape[0]
    n_attn = S * H * T * B
    return (dst[:n_attn].reshape(B, T, H, S).copy(),
            dst[n_attn:].reshape(int(n_snapshots), B, H, S, S).copy())
