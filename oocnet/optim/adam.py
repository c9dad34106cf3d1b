"""Adam with lazy (per-row) semantics for sparse updates."""

from __future__ import annotations

import numpy as np

from .base import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba), lazy: each row keeps its own step count.

    For the rows a step updates::

        t_r += 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        W -= lr * (m / (1 - beta1**t_r)) / (sqrt(v / (1 - beta2**t_r)) + eps)

    Rows a sparse batch does not touch are left alone: their moments do not
    decay and their step count does not advance (the "lazy" Adam of large
    embedding trainers).  In a dense layer every row is touched every step, so
    ``t_r`` equals the global step and this is standard Adam.

    State in the store: ``"<key>:adam_m"`` and ``"<key>:adam_v"`` shaped like the
    parameter, ``"<key>:adam_t"`` with one int64 count per row.

    Parameters
    ----------
    lr : float
        Step size (> 0).
    beta1, beta2 : float
        Decay rates of the moments, in [0, 1).
    eps : float
        Added to the denominator (> 0).
    """

    name = "adam"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self._validate()

    def _validate(self) -> None:
        self.lr = self._positive("lr", self.lr)
        self.beta1 = self._fraction("beta1", self.beta1)
        self.beta2 = self._fraction("beta2", self.beta2)
        self.eps = self._positive("eps", self.eps)

    def state_specs(self, shape, dtype):
        shape = tuple(shape)
        return [("adam_m", shape, np.dtype(dtype)), ("adam_v", shape, np.dtype(dtype)),
                ("adam_t", (shape[0],), np.dtype(np.int64))]

    def _update(self, param, grad, state):
        m, v, t = state["adam_m"], state["adam_v"], state["adam_t"]
        t += 1
        tb = t.reshape(t.shape + (1,) * (param.ndim - 1))
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * (grad * grad)
        c1 = 1.0 - self.beta1 ** tb
        c2 = 1.0 - self.beta2 ** tb
        denom = np.sqrt(v / c2)
        denom += self.eps
        param -= ((self.lr * (m / c1)) / denom).astype(param.dtype, copy=False)

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"
