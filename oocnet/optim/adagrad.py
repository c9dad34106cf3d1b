"""Adagrad: per-element learning rates from accumulated squared gradients."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Optimizer


class Adagrad(Optimizer):
    """Elementwise Adagrad.

    ``G += g**2``;  ``W -= lr * g / (sqrt(G) + eps)``.  ``G`` is kept in the store
    as ``"<key>:adagrad"``, initialised to ``initial_accumulator``.

    Sparse semantics: untouched rows keep their accumulator and weights; a
    touched row is updated exactly as in the dense rule (whose update of a row
    with zero gradient is zero), so sparse and dense training agree.

    Parameters
    ----------
    lr : float
        Learning rate (> 0).
    eps : float
        Added to the denominator (>= 0).
    initial_accumulator : float
        Starting value of ``G`` (>= 0).
    """

    name = "adagrad"

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, initial_accumulator: float = 0.0) -> None:
        self.lr, self.eps, self.initial_accumulator = lr, eps, initial_accumulator
        self._validate()

    def _validate(self) -> None:
        self.lr = self._positive("lr", self.lr)
        self.eps = self._positive("eps", self.eps, allow_zero=True)
        self.initial_accumulator = self._positive("initial_accumulator", self.initial_accumulator, allow_zero=True)
        if self.eps == 0 and self.initial_accumulator == 0:
            raise ConfigError("eps and initial_accumulator cannot both be 0 (division by zero on the first step).")

    def state_specs(self, shape, dtype):
        return [("adagrad", tuple(shape), np.dtype(dtype))]

    def state_init(self, suffix: str) -> float:
        """The value state ``suffix`` starts at."""
        return self.initial_accumulator

    def _update(self, param, grad, state):
        acc = state["adagrad"]
        acc += grad * grad
        denom = np.sqrt(acc)
        denom += self.eps
        grad *= self.lr
        grad /= denom
        param -= grad

    def __repr__(self) -> str:
        return f"Adagrad(lr={self.lr}, eps={self.eps}, initial_accumulator={self.initial_accumulator})"
