"""Stochastic gradient descent, with optional (heavy-ball) momentum."""

from __future__ import annotations

import numpy as np

from .base import Optimizer


class SGD(Optimizer):
    """Plain SGD on the batch-summed gradient, optionally with momentum.

    Without momentum: ``W -= lr * g`` (the notes' rule, N2).
    With momentum mu: ``v = mu * v + g``, ``W -= lr * v``; ``v`` is kept in the
    store as ``"<key>:momentum"``, zero-initialised.

    Sparse semantics: rows a batch does not touch are not updated at all -- their
    momentum does not decay either ("lazy" momentum, as sparse trainers do).
    For dense layers every row is touched every step, so this is exact momentum.

    Parameters
    ----------
    lr : float
        Learning rate (> 0); the notes' worked example uses 0.015.
    momentum : float
        In [0, 1); 0 keeps no state.
    """

    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum
        self._validate()

    def _validate(self) -> None:
        self.lr = self._positive("lr", self.lr)
        self.momentum = self._fraction("momentum", self.momentum)

    def state_specs(self, shape, dtype):
        return [("momentum", tuple(shape), np.dtype(dtype))] if self.momentum else []

    def _update(self, param, grad, state):
        if self.momentum:
            v = state["momentum"]
            v *= self.momentum
            v += grad
            grad = v * self.lr
        else:
            grad *= self.lr
        param -= grad

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr}, momentum={self.momentum})"
