"""Row-wise Adagrad: one accumulator per row, as large-embedding trainers use."""

from __future__ import annotations

import numpy as np

from .adagrad import Adagrad


class RowwiseAdagrad(Adagrad):
    """Adagrad with one accumulator per row (the mean of the row's squared gradient).

    For each row r a step updates::

        G_r += mean(g_r**2)
        W_r -= lr * g_r / (sqrt(G_r) + eps)

    The state, ``"<key>:rowwise_adagrad"``, has one value per row instead of one
    per element -- 1/d of elementwise Adagrad's size for a V x d table.  A row
    with zero gradient is unchanged, so sparse (touched rows only) and dense
    training agree exactly.

    Parameters
    ----------
    lr : float
        Learning rate (> 0).
    eps : float
        Added to the denominator (>= 0).
    initial_accumulator : float
        Starting value of G (>= 0).
    """

    name = "rowwise_adagrad"

    def state_specs(self, shape, dtype):
        return [("rowwise_adagrad", (tuple(shape)[0],), np.dtype(dtype))]

    def _update(self, param, grad, state):
        acc = state["rowwise_adagrad"]
        axes = tuple(range(1, grad.ndim))
        acc += np.mean(grad * grad, axis=axes) if axes else grad * grad
        denom = np.sqrt(acc)
        denom += self.eps
        grad *= self.lr
        grad /= denom.reshape(denom.shape + (1,) * (grad.ndim - 1))
        param -= grad

    def __repr__(self) -> str:
        return f"RowwiseAdagrad(lr={self.lr}, eps={self.eps}, initial_accumulator={self.initial_accumulator})"
