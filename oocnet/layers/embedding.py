"""Embedding: the sparse first layer, s = X @ W over a V x d table, touching only the batch's rows."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..init import check_init
from ..sparse import SparseBatch, prepare
from .base import Layer, ParamSpec, _check_width


class Embedding(Layer):
    """A V x d table looked up by a sparse batch: ``s = X @ W``, ``z = f(s)``.

    ``X`` is B x V sparse (CSR; one-hot, multi-hot bags or weighted counts), or
    integer ids (see :func:`oocnet.sparse.as_csr`).  Only the unique rows the
    batch touches are read: forward gathers them through the pager, remaps
    the CSR's columns onto them (no V-wide array), and computes
    ``s = X_touched @ W_touched``.  Backward computes the touched rows' gradient
    ``X_touched^T delta`` and updates only those rows, and the same rows of the
    optimizer state, in the store.  Repeated ids accumulate.

    It must be the model's first layer (it takes the sparse input).

    Parameters
    ----------
    n_words : int
        Vocabulary size V (rows of the table).
    dim : int
        Embedding width d.
    activation : str, Activation or None
        Applied to s (default identity).
    init : str, callable or ndarray
        Initialiser of the table (default ``"uniform"``: U(-sqrt(3/d), sqrt(3/d)), variance 1/d).
    name : str, optional
        Stable name used in store keys (default ``"embedding_<position>"``).
    """

    kind = "embedding"

    def __init__(self, n_words: int, dim: int, activation="identity", init="uniform", name: str | None = None) -> None:
        super().__init__(_check_width("n_words", n_words), _check_width("dim", dim), activation, name)
        self.init = check_init(init, (self.n_in, self.n_out), "Embedding W")

    def params(self):
        return [ParamSpec("W", (self.n_in, self.n_out), self.init, sparse=True)]

    def check_input(self, x, dtype) -> SparseBatch:
        return prepare(x, self.n_in, dtype)

    def forward(self, access, x: SparseBatch) -> np.ndarray:
        if not isinstance(x, SparseBatch):
            raise ConfigError(f"{self.describe()} must be the first layer of a model: it takes the sparse input.")
        rows = access.gather("W", x.rows)
        s = np.asarray(x.local @ rows)
        if access.training:
            x.held["W"] = rows
        else:
            access.release("W", x.rows)
        return s

    def backward(self, access, x: SparseBatch, delta, need_dx):
        rows = x.held.pop("W", None)
        if rows is None:
            rows = access.gather("W", x.rows)
        grad = np.asarray(x.local.T @ delta)  # (touched rows) x d; repeated ids sum here
        access.update_rows("W", x.rows, rows, grad)
        return None

    def __repr__(self) -> str:
        return f"Embedding({self.n_in}, {self.n_out}, activation={self.activation.name!r})"
