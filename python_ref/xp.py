"""The array module the reference is written over: NumPy or PyTorch behind one small namespace.

The model description (ops, KDA, MLA, MoE, model) is written once against `XP`; `numpy_xp()` runs it
in NumPy (float64 by default: the ground truth) and `torch_xp(dtype, device)` runs the same code in
PyTorch (float32/float64, CPU or CUDA). Only what the two libraries spell differently lives here --
array creation (dtype/device), reductions (`axis` vs `dim`), concatenation, dtype conversion -- so
the layer code reads like plain NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class XP:
    name: str          # "numpy" or "torch"
    dtype: Any         # np.float64 / torch.float32 ...
    device: Any = None  # torch device (None for numpy)

    # -------------------------------------------------------------- creation / conversion
    @property
    def lib(self):
        if self.name == "numpy":
            return np
        import torch
        return torch

    def asarray(self, a, dtype=None):
        """Array in this module's float dtype (or `dtype`), on its device."""
        dtype = self.dtype if dtype is None else dtype
        if self.name == "numpy":
            if _is_torch(a):
                a = a.detach().cpu().numpy()
            return np.asarray(a, dtype=dtype)
        import torch
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(np.ascontiguousarray(a))
        elif not _is_torch(a):
            a = torch.as_tensor(a)
        return a.to(device=self.device, dtype=dtype)

    def index_array(self, a):
        """Integer index array (token ids, expert ids) on this module's device."""
        if self.name == "numpy":
            return np.asarray(a, dtype=np.int64)
        import torch
        return torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        if _is_torch(a):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def zeros(self, shape, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        if self.name == "numpy":
            return np.zeros(shape, dtype=dtype)
        return self.lib.zeros(tuple(shape), dtype=dtype, device=self.device)

    def arange(self, n):
        if self.name == "numpy":
            return np.arange(n)
        return self.lib.arange(n, device=self.device)

    def copy(self, a):
        return a.copy() if self.name == "numpy" else a.clone()

    # -------------------------------------------------------------- elementwise / linear algebra
    def exp(self, a):
        return self.lib.exp(a)

    def log1p(self, a):
        return self.lib.log1p(a)

    def sqrt(self, a):
        return self.lib.sqrt(a)

    def abs(self, a):
        return self.lib.abs(a)

    def maximum(self, a, b):
        if self.name == "numpy":
            return np.maximum(a, b)
        import torch
        if not _is_torch(b):
            return torch.clamp(a, min=b)
        return torch.maximum(a, b)

    def where(self, cond, a, b):
        if self.name == "numpy":
            return np.where(cond, a, b)
        import torch
        if not _is_torch(b):
            b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
        if not _is_torch(a):
            a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
        return torch.where(cond, a, b)

    def einsum(self, spec, *ops):
        if self.name == "numpy":
            return np.einsum(spec, *ops, optimize=True)
        return self.lib.einsum(spec, *ops)

    def sum(self, a, axis, keepdims=False):
        if self.name == "numpy":
            return a.sum(axis=axis, keepdims=keepdims)
        return a.sum(dim=axis, keepdim=keepdims)

    def max(self, a, axis, keepdims=False):
        if self.name == "numpy":
            return a.max(axis=axis, keepdims=keepdims)
        return a.amax(dim=axis, keepdim=keepdims)

    def mean(self, a, axis, keepdims=False):
        if self.name == "numpy":
            return a.mean(axis=axis, keepdims=keepdims)
        return a.mean(dim=axis, keepdim=keepdims)

    def cumsum(self, a, axis):
        if self.name == "numpy":
            return np.cumsum(a, axis=axis)
        return a.cumsum(dim=axis)

    def concat(self, arrays, axis):
        if self.name == "numpy":
            return np.concatenate(arrays, axis=axis)
        return self.lib.cat(list(arrays), dim=axis)

    def stack(self, arrays, axis):
        if self.name == "numpy":
            return np.stack(arrays, axis=axis)
        return self.lib.stack(list(arrays), dim=axis)

    def swapaxes(self, a, i, j):
        if self.name == "numpy":
            return np.swapaxes(a, i, j)
        return a.transpose(i, j)

    def tril_mask(self, n, k=0):
        """Boolean [n, n] mask of j <= i + k (k=0: causal incl. diagonal, k=-1: strictly lower)."""
        i = self.arange(n)
        return i[:, None] + k >= i[None, :]

    def argsort_desc(self, a, axis=-1):
        """Indices sorting `a` descending along axis; ties keep the lower index first (stable)."""
        if self.name == "numpy":
            return np.argsort(-a, axis=axis, kind="stable")
        return self.lib.argsort(a, dim=axis, descending=True, stable=True)

    def take_along(self, a, idx, axis):
        if self.name == "numpy":
            return np.take_along_axis(a, idx, axis=axis)
        return self.lib.gather(a, axis, idx)


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def numpy_xp(dtype=np.float64) -> XP:
    return XP("numpy", np.dtype(dtype).type)


def torch_xp(dtype="float32", device="cpu") -> XP:
    import torch
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    return XP("torch", dtype, torch.device(device))


def xp_of(a) -> XP:
    """The module (and float dtype) of an existing array: numpy arrays keep float32/float64,
    anything else (ints, float16) computes in float64; torch tensors keep dtype and device."""
    if _is_torch(a):
        import torch
        dt = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float64
        return XP("torch", dt, a.device)
    a = np.asarray(a)
    dt = a.dtype.type if a.dtype in (np.float32, np.float64) else np.float64
    return XP("numpy", dt)
