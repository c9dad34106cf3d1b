"""The optimizer contract: state declared per parameter, updates applied in place to blocks.

An optimizer never holds parameters or state itself.  For each parameter it
declares the state arrays it needs (:meth:`Optimizer.state_specs`); the model
creates them in the store beside the parameter, under the key
``"<parameter key>:<suffix>"``, with the same number of rows, so the pager hands
the optimizer a parameter block and the same rows of each state array.  An
update therefore works the same on a whole parameter, a row range of it, or the
rows an embedding batch touched -- which is what makes the sparse ("lazy")
semantics of each rule fall out of one code path.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import ConfigError, InputError, NumericalError
from ..phases import phase as _phase


#: State suffixes whose values are sums or averages of squares, and step counts.
_SQUARES = {"adagrad": "an Adagrad accumulator", "rowwise_adagrad": "a row-wise Adagrad accumulator",
            "adam_v": "Adam's second moment"}
_COUNTS = {"adam_t": "Adam's per-row step count"}


def check_state_values(suffix: str, values: np.ndarray, where: str) -> None:
    """Refuse optimizer state (loaded from outside) that its rule could never have written."""
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise InputError(f"{where} contains NaN or inf.")
    if suffix in _SQUARES and np.any(values < 0):
        raise InputError(f"{where} holds negative values; {_SQUARES[suffix]} is a sum of squares (>= 0).")
    if suffix in _COUNTS and (np.any(values < 0) or np.any(values != np.round(values))):
        raise InputError(f"{where} must hold whole numbers >= 0 ({_COUNTS[suffix]}).")


def _check_finite(param: np.ndarray) -> None:
    """Raise if an update left a non-finite value (a sum first: one pass, no temporary)."""
    if param.size and not np.isfinite(param.sum()) and not np.all(np.isfinite(param)):
        raise NumericalError(
            "this step's update made parameters NaN or inf (the learning rate is too large for the gradients, or "
            "the loss's gradient is not finite); they are partly updated, so nothing is committed on top: close "
            "the model and reopen its store to roll back to the last commit, then lower the learning rate."
        )


class Optimizer:
    """Base class of update rules.

    Subclasses set ``name``, override :meth:`state_specs` when they keep state,
    and implement :meth:`step`.
    """

    name = "optimizer"

    def state_specs(self, shape: tuple[int, ...], dtype: np.dtype) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """``(suffix, shape, dtype)`` of each state array kept for a parameter of ``shape``; axis 0 matches."""
        return []

    def state_init(self, suffix: str) -> float:
        """The constant that state ``suffix`` starts at (0 unless a rule says otherwise)."""
        return 0.0

    def _validate(self) -> None:
        """Check (and normalise) the hyperparameters; run at construction and before every update,
        so that one changed on the object afterwards (``opt.lr = -5``) is caught too."""


    #: Rows are updated in chunks of about this many elements, so the rule's
    #: temporaries stay small (and in cache) however large the block is.
    chunk_elements = 1 << 15

    def step(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Update ``param`` (a block of rows) in place from ``grad``; ``state`` holds the same rows of each state array.

        ``grad`` is the batch-summed gradient of these rows; it may be overwritten.
        """
        self._validate()
        with _phase("update"):  # a profiler mark, in the layer being updated
            n = param.shape[0]
            per_row = max(1, param.size // max(1, n))
            step = max(1, self.chunk_elements // per_row)
            if step >= n:
                self._update(param, grad, state)
            else:
                for a in range(0, n, step):
                    b = min(n, a + step)
                    self._update(param[a:b], grad[a:b], {k: v[a:b] for k, v in state.items()})
            _check_finite(param)



    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """The rule on one chunk of rows (in place)."""
        raise NotImplementedError

    @staticmethod
    def _positive(name: str, value, allow_zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or (
            value < 0 if allow_zero else value <= 0
        ):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}.")
        return float(value)

    @staticmethod
    def _fraction(name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}.")
        return float(value)
