"""ctypes glue between torch CUDA tensors in FLA layout and the CUDA KDA op (libkimi_kda_gpu.so, or any
library exporting kimi_kda_forward_cuda_ex), shared by scripts/gpu_bench.py and tests/test_kda_cuda.py.

Layouts: FLA q, k [B, T, H, K] contiguous is exactly ggml [K, H, T, B]; the state FLA [B, H, K, V]
(S[i][j], i key) is stored by ggml transposed, element (ne0 = i, ne1 = j) -> memory [B, H, V, K].
Loaded by path (importlib): this folder is not a Python package.
"""
from __future__ import annotations

import ctypes as C
import math
import statistics

import torch

ALGO = {"auto": 0, "recurrent": 1, "chunked": 2}
MATH = {"default": -1, "fp32": 0, "tf32x3": 1, "tf32": 2, "bf16": 3, "f16": 4,
        "fp32+fused": 0x100, "tf32x3+fused": 0x101, "tf32+fused": 0x102, "bf16+fused": 0x103}


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("ne", C.c_int64 * 4), ("nb", C.c_size_t * 4)]


class Params(C.Structure):
    _fields_ = [("q", Tensor), ("k", Tensor), ("v", Tensor), ("g", Tensor), ("beta", Tensor),
                ("state", Tensor), ("dst", C.c_void_p), ("n_snapshots", C.c_int64), ("algo", C.c_int)]


def load(path: str):
    lib = C.CDLL(path)
    lib.kimi_kda_forward_cuda.argtypes = [C.POINTER(Params), C.c_void_p, C.c_char_p, C.c_size_t]
    if hasattr(lib, "kimi_kda_forward_cuda_ex"):  # absent when the library was built without CUDA
        lib.kimi_kda_forward_cuda_ex.argtypes = [C.POINTER(Params), C.c_int, C.c_void_p, C.c_char_p, C.c_size_t]
    if hasattr(lib, "kimi_kda_forward_cuda_ws"):
        lib.kimi_kda_forward_cuda_ws.argtypes = [C.POINTER(Params), C.c_int, C.c_void_p, C.c_size_t, C.c_void_p,
                                                 C.c_char_p, C.c_size_t]
        lib.kimi_kda_cuda_workspace_bytes.argtypes = [C.POINTER(Params)]
        lib.kimi_kda_cuda_workspace_bytes.restype = C.c_size_t
    if hasattr(lib, "kimi_kda_forward_cpu_threads"):
        lib.kimi_kda_forward_cpu_threads.argtypes = [C.POINTER(Params), C.c_int, C.c_char_p, C.c_size_t]
    return lib


def desc(t: torch.Tensor, ne, strides_el=None) -> Tensor:
    """ggml description of t: ne fastest-first; strides (elements, fastest-first) default t's own, reversed."""
    d = Tensor()
    d.data = t.data_ptr()
    st = strides_el if strides_el is not None else list(reversed(t.stride()))
    for i in range(4):
        d.ne[i] = int(ne[i])
        d.nb[i] = int(st[i]) * t.element_size()
    return d


def ggml_view(a: torch.Tensor, permuted: bool):
    """[B, T, H, D] FLA tensor -> (storage tensor, ne, element strides). permuted stores it [B, H, T, D]
    in memory (a view with T and H strides swapped, as a ggml_permute would give)."""
    B, T, H, D = a.shape
    if not permuted:
        a = a.contiguous()
        return a, (D, H, T, B), (1, D, D * H, D * H * T)
    m = a.permute(0, 2, 1, 3).contiguous()  # [B, H, T, D]
    return m, (D, H, T, B), (1, D * T, D, D * H * T)


def make_params(q, k, v, g, beta, state, dst, K=1, algo="auto", permuted=False):
    """Params for FLA-layout inputs (q, k [B_qk, T, H_k, S]; v, g [B, T, H, S]; beta [B, T, H];
    state [B, H, S, S] in FLA orientation or None). Returns (params, keepalive)."""
    keep = []
    p = Params()
    for name, a in (("q", q), ("k", k), ("v", v), ("g", g)):
        m, ne, st = ggml_view(a, permuted and name != "g")
        keep.append(m)
        setattr(p, name, desc(m, ne, st))
    B, T, H = beta.shape
    bm = beta.contiguous()
    keep.append(bm)
    p.beta = desc(bm, (1, H, T, B), (1, 1, H, H * T))
    S = v.shape[-1]
    st = state if state is not None else torch.zeros(B, H, S, S, device=v.device, dtype=torch.float32)
    sm = st.transpose(-1, -2).contiguous()  # [B, H, V, K]: element (i, j) at i + j*S
    keep.append(sm)
    p.state = desc(sm, (S, S, H, B), (1, S, S * S, S * S * H))
    p.dst = dst.data_ptr()
    p.n_snapshots = K
    p.algo = ALGO[algo]
    return p, keep


def dst_numel(B, T, H, S, K):
    return S * H * T * B + K * S * S * H * B


def split_dst(dst, B, T, H, S, K):
    """dst -> (o [B, T, H, S], states [K, B, H, S(key), S(value)] in FLA orientation)."""
    n_o = S * H * T * B
    o = dst[:n_o].view(B, T, H, S)
    st = dst[n_o:].view(K, B, H, S, S).transpose(-1, -2)  # stored [.., j, i] -> [.., i, j]
    return o, st


def workspace(lib, p):
    """A torch-allocated scratch buffer for p (None when the recurrent path needs none)."""
    n = lib.kimi_kda_cuda_workspace_bytes(C.byref(p))
    return torch.empty(max(n, 16) // 4 + 4, device="cuda") if n else None


def forward(lib, p, math_mode="default", stream=None, ws=None) -> None:
    err = C.create_string_buffer(256)
    s = stream if stream is not None else torch.cuda.current_stream().cuda_stream
    if ws is not None:
        rc = lib.kimi_kda_forward_cuda_ws(C.byref(p), MATH[math_mode], C.c_void_p(ws.data_ptr()), ws.numel() * 4,
                                          C.c_void_p(s), err, 256)
    else:
        rc = lib.kimi_kda_forward_cuda_ex(C.byref(p), MATH[math_mode], C.c_void_p(s), err, 256)
    if rc != 0:
        raise RuntimeError(f"kimi_kda_forward_cuda_ex rc={rc}: {err.value.decode()}")


def inputs(B, T, H, S, *, Hk=None, Bqk=None, seed=0, device="cuda", init_state=True):
    """Realistic random inputs (fresh per seed): l2-normalised q, k; log-gates log-uniform in
    [-20, -1e-4]; beta in [0, 1]; v ~ N(0, 1); initial state ~ 0.1 N(0, 1). float32 on device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Hk = Hk or H
    Bqk = Bqk or B
    q = torch.nn.functional.normalize(torch.randn(Bqk, T, Hk, S, generator=gen, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(Bqk, T, Hk, S, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, S, generator=gen, dtype=torch.float64)
    lo, hi = math.log(1e-4), math.log(20.0)
    g = -torch.exp(lo + (hi - lo) * torch.rand(B, T, H, S, generator=gen, dtype=torch.float64))
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    s0 = 0.1 * torch.randn(B, H, S, S, generator=gen, dtype=torch.float64) if init_state else None
    f = lambda a: None if a is None else a.to(device=device, dtype=torch.float32)  # noqa: E731
    return f(q), f(k), f(v), f(g), f(beta), f(s0)


def broadcast_qk(a, H, B):
    """q/k with H_k heads, B_qk seqs -> H, B, as the op broadcasts (tiled heads, blocked seqs)."""
    Bqk, _, Hk, _ = a.shape
    return a.repeat(1, 1, H // Hk, 1).repeat_interleave(B // Bqk, dim=0)


def rel(a, b) -> float:
    a = a.double()
    b = b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def capture_graph(fn, n_inner, warm=3):
    """A CUDA graph of n_inner back-to-back calls of fn (warmed up on a side stream first, replayed
    `warm` times), ready to time."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warm):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(n_inner):
            fn()
    for _ in range(3):
        gr.replay()
    torch.cuda.synchronize()
    return gr


def time_graph(fn, n_inner, reps=20, hold=False):
    """Median microseconds per call of fn, from CUDA-graph replays of n_inner calls timed with events.
    hold: a spin kernel holds the stream while the replay is queued, so the host-side graph launch
    is not timed (for steps of a few microseconds)."""
    gr = capture_graph(fn, n_inner)
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if hold:
            torch.cuda._sleep(1_000_000)  # ~0.5 ms of spinning: the replay below is queued by then
        a.record()
        gr.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / n_inner)
    return statistics.median(ts)
