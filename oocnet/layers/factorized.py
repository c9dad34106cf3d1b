"""Factorized layers: W = U V kept as its two factors, trained as such (N4: fewer parameters).

``FactorizedDense(n_in, n_out, rank)`` computes ``s = (x @ U) @ V + b`` and
``FactorizedEmbedding(V, d, rank)`` computes ``s = (X @ U) @ V`` on a sparse
batch, touching only U's rows the batch names.  Either is what
:func:`oocnet.compress.factorize` leaves behind: name the layer like the one
that was compressed and the model picks U and V up from the store.

Backward, per N2, with δ = dL/ds and h = x U (recomputed, since a layer keeps
nothing between calls -- one more read of U's tiles and B·n_in·r flops):

* ``dV = hᵀ δ``, ``dh = δ Vᵀ`` (with V as it was), then V is updated;
* ``dU = xᵀ dh``, ``dx = dh Uᵀ`` (with U as it was), then U is updated.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..init import check_init
from ..sparse import SparseBatch, prepare
from .base import Layer, ParamSpec, _check_width, backward_row_tiles, forward_row_tiles


def _check_rank(rank, n_in: int, n_out: int, what: str) -> int:
    high = min(n_in, n_out)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= high:
        raise ConfigError(f"rank of {what} must be an integer in [1, {high}] (min of its widths {n_in} and "
                          f"{n_out}), got {rank!r}.")
    return int(rank)


def _split_init(init, default: tuple, shapes: tuple, what: str) -> tuple:
    """``init`` for both factors, or a pair ``(init_U, init_V)``; each checked against its shape."""
    if init is None:
        pair = default
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        pair = tuple(default[i] if v is None else v for i, v in enumerate(init))
    else:
        pair = (init, init)
        if isinstance(init, np.ndarray):
            raise ConfigError(f"init of {what} must give an array per factor: pass (U, V), got one array.")
    return (check_init(pair[0], shapes[0], f"{what} U"), check_init(pair[1], shapes[1], f"{what} V"))


def _update_v(access, h: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Update V from ``dV = hᵀ δ``; return ``dh = δ Vᵀ`` computed with V before the update."""
    dh = np.empty(h.shape, dtype=delta.dtype)
    for a, b in reversed(access.tiles("V")):
        with access.update("V", a, b) as (v, grad, apply):
            np.matmul(delta, v.T, out=dh[:, a:b])
            np.matmul(h[:, a:b].T, delta, out=grad)
            apply()
    return dh


class FactorizedDense(Layer):
    """A dense layer of rank at most r: ``s = (x @ U) @ V + b``, ``z = f(s)``.

    U (n_in x r) is tiled by rows like :class:`~oocnet.Dense`'s W, V (r x n_out)
    too; ``r (n_in + n_out)`` parameters instead of ``n_in n_out``.  With one
    tile per parameter the computation is the whole-matrix one.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    rank : int
        r, in ``[1, min(n_in, n_out)]``.
    activation : str, Activation or None
        Applied to s.
    bias : bool
        Add a bias b (n_out,), zero-initialised.
    init : str, callable, array pair or pair of those
        One initialiser for both factors, or ``(init_U, init_V)`` (arrays of shape
        (n_in, r) and (r, n_out) are accepted in a pair).  Default
        ``"glorot_uniform"`` for both (``"he_uniform"`` for U with relu).
    name : str, optional
        Stable name used in store keys (default ``"factorized_dense_<position>"``).
        Use the name of a compressed Dense layer to train its factors.

    Notes
    -----
    Backward recomputes ``h = x @ U`` (layers keep nothing between calls), so a
    step reads U's tiles twice; the arithmetic stays ``O(B r (n_in + n_out))``.
    """

    kind = "factorized_dense"

    def __init__(self, n_in: int, n_out: int, rank: int, activation="identity", bias: bool = True, init=None,
                 name: str | None = None) -> None:
        super().__init__(n_in, n_out, activation, name)
        self.rank = _check_rank(rank, self.n_in, self.n_out, "FactorizedDense")
        if not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"bias must be True or False, got {bias!r}.")
        self.bias = bool(bias)
        first = "he_uniform" if self.activation.name == "relu" else "glorot_uniform"
        self.init_u, self.init_v = _split_init(
            init, (first, "glorot_uniform"), ((self.n_in, self.rank), (self.rank, self.n_out)), "FactorizedDense")

    def params(self):
        specs = [ParamSpec("U", (self.n_in, self.rank), self.init_u),
                 ParamSpec("V", (self.rank, self.n_out), self.init_v)]
        if self.bias:
            specs.append(ParamSpec("b", (self.n_out,), None))
        return specs

    def forward(self, access, x):
        s = forward_row_tiles(access, "V", forward_row_tiles(access, "U", x))
        if self.bias:
            with access.read("b", 0, self.n_out) as bvec:
                s += bvec
        return s

    def backward(self, access, x, delta, need_dx):
        if self.bias:
            with access.update("b", 0, self.n_out) as (_, grad, apply):
                np.sum(delta, axis=0, out=grad)
                apply()
        h = forward_row_tiles(access, "U", x)
        dh = _update_v(access, h, delta)
        dx = np.empty((delta.shape[0], self.n_in), dtype=delta.dtype) if need_dx else None
        backward_row_tiles(access, "U", x, dh, dx)
        return dx

    def describe(self) -> str:
        return f"{self.name or self.kind} (FactorizedDense {self.n_in}->{self.rank}->{self.n_out})"

    def __repr__(self) -> str:
        return (f"FactorizedDense({self.n_in}, {self.n_out}, rank={self.rank}, "
                f"activation={self.activation.name!r}, bias={self.bias})")


class FactorizedEmbedding(Layer):
    """A V x d table of rank at most r, looked up by a sparse batch: ``s = (X @ U) @ V``, ``z = f(s)``.

    U (V x r) is accessed by rows like :class:`~oocnet.Embedding`'s table: a step
    gathers only the unique rows its batch touches and writes back only those
    (and the same rows of U's optimizer state); V (r x d) is small and dense.
    ``r (V + d)`` parameters instead of ``V d``.  It must be the model's first
    layer.

    Parameters
    ----------
    n_words : int
        Vocabulary size V (rows of U).
    dim : int
        Output width d.
    rank : int
        r, in ``[1, min(V, d)]``.
    activation : str, Activation or None
        Applied to s (default identity).
    init : str, callable, or pair
        One initialiser for both factors or ``(init_U, init_V)``; default
        ``"uniform"`` for both (variance 1/r for U and 1/d for V, so a row of
        ``U V`` has the variance 1/d of an :class:`~oocnet.Embedding` row).
    name : str, optional
        Stable name used in store keys (default ``"factorized_embedding_<position>"``).
        Use the name of a compressed Embedding to train its factors.
    """

    kind = "factorized_embedding"

    def __init__(self, n_words: int, dim: int, rank: int, activation="identity", init=None,
                 name: str | None = None) -> None:
        super().__init__(_check_width("n_words", n_words), _check_width("dim", dim), activation, name)
        self.rank = _check_rank(rank, self.n_in, self.n_out, "FactorizedEmbedding")
        self.init_u, self.init_v = _split_init(
            init, ("uniform", "uniform"), ((self.n_in, self.rank), (self.rank, self.n_out)), "FactorizedEmbedding")

    def params(self):
        return [ParamSpec("U", (self.n_in, self.rank), self.init_u, sparse=True),
                ParamSpec("V", (self.rank, self.n_out), self.init_v)]

    def check_input(self, x, dtype) -> SparseBatch:
        return prepare(x, self.n_in, dtype)

    def forward(self, access, x: SparseBatch) -> np.ndarray:
        if not isinstance(x, SparseBatch):
            raise ConfigError(f"{self.describe()} must be the first layer of a model: it takes the sparse input.")
        rows = access.gather("U", x.rows)
        if access.training:
            x.held["U"] = rows  # kept for backward; the model gives them back if backward does not run
            return forward_row_tiles(access, "V", np.asarray(x.local @ rows))
        try:
            return forward_row_tiles(access, "V", np.asarray(x.local @ rows))
        finally:
            access.release("U", x.rows)

    def backward(self, access, x: SparseBatch, delta, need_dx):
        rows = x.held.get("U")
        if rows is None:
            rows = x.held["U"] = access.gather("U", x.rows)
        h = np.asarray(x.local @ rows)  # B x r
        dh = _update_v(access, h, delta)
        grad = np.asarray(x.local.T @ dh)  # touched rows x r; repeated ids sum here
        del x.held["U"]  # update_rows gives the rows back (written, or released on error)
        access.update_rows("U", x.rows, rows, grad)
        return None

    def describe(self) -> str:
        return f"{self.name or self.kind} (FactorizedEmbedding {self.n_in}->{self.rank}->{self.n_out})"

    def __repr__(self) -> str:
        return (f"FactorizedEmbedding({self.n_in}, {self.n_out}, rank={self.rank}, "
                f"activation={self.activation.name!r})")


__all__ = ["FactorizedDense", "FactorizedEmbedding"]
