"""Elementwise and small building blocks of the reference, written over an array module (python_ref.xp)."""
from __future__ import annotations

from .xp import XP


def linear(x, w):
    """x @ w^T with w in torch order [out, in]."""
    return x @ w.T


def sigmoid(xp: XP, x):
    # exp of -|x| only: no overflow warnings for large |x| in either direction
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(xp: XP, x):
    return x * sigmoid(xp, x)


def softplus(xp: XP, x, threshold: float | None = 20.0):
    """log(1 + exp(x)), stable; above `threshold` it returns x itself (torch/FLA/ggml convention)."""
    exact = xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))
    if threshold is None:
        return exact
    return xp.where(x > threshold, x, exact)


def rmsnorm(xp: XP, x, weight, eps: float):
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    return x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def l2norm(xp: XP, x, eps: float):
    """x / sqrt(sum(x^2) + eps) over the last axis (FLA's form: eps inside the sqrt)."""
    return x / xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True) + eps)


def swiglu(xp: XP, x, w_gate, w_up, w_down):
    """down(silu(gate(x)) * up(x)): the dense FFN, each routed expert and the shared expert."""
    return linear(silu(xp, linear(x, w_gate)) * linear(x, w_up), w_down)


def causal_conv(xp: XP, x, weight, state):
    """Causal depthwise conv with carried state (no bias).

    x [T, C]; weight [C, K] (torch's [C, 1, K] squeezed); state [K-1, C]: the K-1 inputs before x
    (zeros at the start of a sequence). out[t, c] = sum_j weight[c, j] * xs[t + j, c] over the
    concatenation xs = [state; x], i.e. tap K-1 multiplies the current token. Returns (out [T, C],
    new state = the last K-1 rows of xs).
    """
    T = x.shape[0]
    K = weight.shape[1]
    xs = xp.concat([state, x], axis=0)
    out = 0.0
    for j in range(K):
        out = out + xs[j:j + T] * weight[:, j]
    return out, xs[xs.shape[0] - (K - 1):]


def softmax(xp: XP, s, axis: int = -1):
    m = xp.max(s, axis=axis, keepdims=True)
    e = xp.exp(s - m)
    return e / xp.sum(e, axis=axis, keepdims=True)
