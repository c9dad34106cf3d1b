"""Dense: s = x @ W (+ b), W of shape n_in x n_out, processed in row tiles of W."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..init import check_init
from .base import Layer, ParamSpec, backward_row_tiles, forward_row_tiles


class Dense(Layer):
    """A fully connected layer: ``s = x @ W + b``, ``z = f(s)``.

    W (n_in x n_out) may be larger than the memory budget: the model hands the
    layer row tiles ``W[a:b]`` (contiguous on disk), and

    * forward accumulates ``s += x[:, a:b] @ W[a:b]`` over tiles;
    * backward, per tile and before updating it, computes
      ``dx[:, a:b] = delta @ W[a:b].T`` (N2: delta below uses the weights as they
      were), then the gradient ``x[:, a:b].T @ delta`` (N1: dL/dW = z_prev^T delta)
      and applies the update.

    With one tile this is exactly the whole-matrix computation.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    activation : str, Activation or None
        ``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"identity"`` or an :class:`~oocnet.Activation`.
    bias : bool
        Add a bias vector b (n_out,), zero-initialised.
    init : str, callable or ndarray
        Initialiser of W: ``"glorot_uniform"`` (default; ``"he_uniform"`` for relu),
        ``"normal"``, ``"zeros"``, ``init(start, stop)`` returning rows, or an array.
    name : str, optional
        Stable name used in store keys (default ``"dense_<position>"``).
    """

    kind = "dense"

    def __init__(self, n_in: int, n_out: int, activation="identity", bias: bool = True, init=None,
                 name: str | None = None) -> None:
        super().__init__(n_in, n_out, activation, name)
        if not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"bias must be True or False, got {bias!r}.")
        self.bias = bool(bias)
        if init is None:
            init = "he_uniform" if self.activation.name == "relu" else "glorot_uniform"
        self.init = check_init(init, (self.n_in, self.n_out), "Dense W")

    def params(self):
        specs = [ParamSpec("W", (self.n_in, self.n_out), self.init)]
        if self.bias:
            specs.append(ParamSpec("b", (self.n_out,), None))
        return specs

    def forward(self, access, x):
        s = forward_row_tiles(access, "W", x)
        if self.bias:
            with access.read("b", 0, self.n_out) as bvec:
                s += bvec
        return s

    def backward(self, access, x, delta, need_dx):
        dx = np.empty((delta.shape[0], self.n_in), dtype=delta.dtype) if need_dx else None
        if self.bias:
            with access.update("b", 0, self.n_out) as (_, grad, apply):
                np.sum(delta, axis=0, out=grad)
                apply()
        backward_row_tiles(access, "W", x, delta, dx)
        return dx

    def __repr__(self) -> str:
        return (f"Dense({self.n_in}, {self.n_out}, activation={self.activation.name!r}, "
                f"bias={self.bias})")
