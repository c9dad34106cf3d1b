"""What every layer shares: parameter declarations and the access object the model hands it.

A layer declares its parameters (:class:`ParamSpec`) and implements

``forward(access, x) -> s``
    the pre-activation s = layer(x);
``backward(access, x, delta, need_dx) -> dx``
    with ``delta`` = dL/ds of this layer, return dL/dx computed with the
    weights *as they were* before this step, and update the parameters.

It never touches a store or a file: it asks ``access`` (a :class:`ParamAccess`)
for blocks of its parameters, in the row tiles the model chose for the
budget, and keeps nothing on ``self`` between calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .._arrays import as_real, check_finite
from ..activations import Activation, get_activation
from ..errors import ConfigError, ShapeError
from ..optim.base import Optimizer
from ..paging import Pager


@dataclass(frozen=True)
class ParamSpec:
    """A parameter a layer declares.

    Attributes
    ----------
    name : str
        Short name within the layer (``"W"``, ``"b"``); the store key is ``"<layer>/<name>"``.
    shape : tuple of int
        Axis 0 is the row axis the pager tiles.
    init : str, callable, ndarray or None
        An initialiser name (see :mod:`oocnet.init`), ``init(start, stop)``, an array, or None for zeros.
    """

    name: str
    shape: tuple[int, ...]
    init: Any = None
    #: Accessed by sets of rows (:meth:`ParamAccess.gather`), never tiled or prefetched whole.
    sparse: bool = False


def _check_width(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


class Layer:
    """Base class of layers.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    activation : str, Activation or None
        Applied to the layer's output s (None = identity).
    name : str, optional
        Stable name used in store keys; defaults to ``"<kind>_<position>"``.
    """

    kind = "layer"

    def __init__(self, n_in: int, n_out: int, activation=None, name: str | None = None) -> None:
        self.n_in = _check_width("n_in", n_in)
        self.n_out = _check_width("n_out", n_out)
        self.activation: Activation = get_activation(activation)
        if name is not None and (not isinstance(name, str) or not name or "/" in name or ":" in name):
            raise ConfigError(f"layer name must be a non-empty string without '/' or ':', got {name!r}.")
        self.name = name

    def params(self) -> list[ParamSpec]:
        """The parameters this layer declares."""
        raise NotImplementedError

    def check_input(self, x, dtype: np.dtype):
        """Validate and convert a batch given to this layer as the model's first layer."""
        raw, arr = as_real(x, dtype, f"the batch given to {self.describe()}", ShapeError)
        if arr.ndim == 1 and self.n_in == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != self.n_in:
            raise ShapeError(
                f"{self.describe()} needs a batch of shape (rows, {self.n_in}), got shape {arr.shape}."
            )
        check_finite(raw, arr, f"the batch given to {self.describe()}")
        return arr

    def forward(self, access: "ParamAccess", x) -> np.ndarray:
        """Return s for the batch ``x`` (rows x n_in)."""
        raise NotImplementedError

    def backward(self, access: "ParamAccess", x, delta: np.ndarray, need_dx: bool) -> np.ndarray | None:
        """Update the parameters from ``delta`` (= dL/ds) and return dL/dx (pre-update weights) if ``need_dx``."""
        raise NotImplementedError

    def describe(self) -> str:
        """``"dense_1 (Dense 128->16)"``-style label for messages."""
        return f"{self.name or self.kind} ({type(self).__name__} {self.n_in}->{self.n_out})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_in}, {self.n_out}, activation={self.activation.name!r})"


@dataclass
class ParamAccess:
    """A layer's window onto its parameters for one pass: row tiles, reads, updates.

    Made by the model; a layer only calls its methods.
    """

    pager: Pager
    prefix: str
    tiles_by_name: dict[str, list[tuple[int, int]]]
    optimizer: Optimizer | None = None
    state_suffixes: dict[str, list[str]] = field(default_factory=dict)
    record: dict[str, np.ndarray] | None = None  # gradient recording (tests, gradcheck)
    #: True when a backward pass follows this forward pass (gathered rows are kept for it).
    training: bool = False
    #: Called before each update of parameters (the model learns when a step starts changing them).
    on_update: Callable[[], None] | None = None

    def key(self, name: str) -> str:
        """The store key of parameter ``name``."""
        return f"{self.prefix}/{name}"

    def tiles(self, name: str) -> list[tuple[int, int]]:
        """Row ranges ``[(start, stop), ...]`` in which ``name`` must be processed."""
        return self.tiles_by_name[name]

    @contextlib.contextmanager
    def read(self, name: str, start: int, stop: int) -> Iterator[np.ndarray]:
        """Rows ``[start, stop)`` of ``name``, read-only for the duration of the block."""
        with self.pager.rows(self.key(name), start, stop) as arr:
            yield arr

    @contextlib.contextmanager
    def update(self, name: str, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray, Callable[[], None]]]:
        """Rows ``[start, stop)`` of ``name``, a gradient buffer shaped like them, and ``apply()``.

        Fill the buffer with the rows' gradient, then call ``apply()`` to update the
        rows in place.  Compute anything that needs the pre-update values first.
        The buffer comes from the pager and counts against the budget.
        """
        key = self.key(name)
        suffixes = self.state_suffixes.get(name, [])
        with contextlib.ExitStack() as stack:
            param = stack.enter_context(self.pager.rows(key, start, stop, write=self.record is None))
            state = {
                s: stack.enter_context(self.pager.rows(f"{key}:{s}", start, stop, write=True)) for s in suffixes
            }
            grad = stack.enter_context(self.pager.temp(param.shape, param.dtype))

            def apply() -> None:
                if self.record is not None:
                    self.record[key][start:stop] += grad
                else:
                    if self.on_update is not None:
                        self.on_update()
                    self.optimizer.step(param, grad, state)

            yield param, grad, apply

    # -- row sets (sparse layers) ------------------------------------------------------
    def gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (sorted, unique) of ``name``; give them back with :meth:`release` or :meth:`update_rows`."""
        return self.pager.gather(self.key(name), rows)

    def release(self, name: str, rows: np.ndarray) -> None:
        """Give back gathered rows unchanged."""
        self.pager.release(self.key(name), rows)

    def update_rows(self, name: str, rows: np.ndarray, param: np.ndarray, grad: np.ndarray) -> None:
        """Apply the update to gathered rows ``param`` (and the same rows of the optimizer state), write them back.

        Only these rows -- of the parameter and of its state -- are read or written:
        a step costs what the batch touches.
        """
        key = self.key(name)
        if self.record is not None:
            self.record[key][rows] += grad
            self.pager.release(key, rows)
            return
        suffixes = self.state_suffixes.get(name, [])
        state: dict[str, np.ndarray] = {}
        try:
            for s in suffixes:
                state[s] = self.pager.gather(f"{key}:{s}", rows)
            if self.on_update is not None:
                self.on_update()
            self.optimizer.step(param, grad, state)
        except BaseException:
            for s in state:
                self.pager.release(f"{key}:{s}", rows)
            self.pager.release(key, rows)
            raise
        self.pager.scatter(key, rows, param)
        for s, values in state.items():
            self.pager.scatter(f"{key}:{s}", rows, values)


def forward_row_tiles(access: ParamAccess, name: str, x: np.ndarray) -> np.ndarray:
    """``x @ P`` for a parameter P (rows = inputs), accumulated over its row tiles.

    With one tile this is exactly the whole product; with several, the summation
    order changes (equal to ~1e-12 relative in float64).
    """
    s = None
    for a, b in access.tiles(name):
        with access.read(name, a, b) as p:
            part = x[:, a:b] @ p
        if s is None:
            s = part
        else:
            s += part
    return s


def backward_row_tiles(access: ParamAccess, name: str, x: np.ndarray, delta: np.ndarray,
                       dx: np.ndarray | None) -> None:
    """Backward of ``s = x @ P`` for a parameter P (rows = inputs) processed in its row tiles.

    Per tile, top tile first (the one forward read last is likeliest still in RAM):
    ``dx[:, a:b] = delta @ P[a:b].T`` with the tile as it was, then the gradient
    ``x[:, a:b].T @ delta`` and the update.
    """
    for a, b in reversed(access.tiles(name)):
        with access.update(name, a, b) as (p, grad, apply):
            if dx is not None:
                np.matmul(delta, p.T, out=dx[:, a:b])
            np.matmul(x[:, a:b].T, delta, out=grad)
            apply()
