"""Losses: a value L(z, y) and its delta dL/dz, summed over the batch as the notes do.

Each loss is a small object with three pure methods:

``check_targets(y, n_out, n_rows)``
    validate and normalise the targets once, before any state changes;
``value(z, y)``
    the batch loss (a Python float);
``delta(z, y)``
    dL/dz, an array shaped like z.  The model multiplies it by the output
    activation's derivative to get delta_out (N2, step 3).

``reduction="sum"`` (the default, as in the notes) sums over the batch;
``"mean"`` divides value and delta by the number of rows.
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from ._arrays import as_real, check_finite, user_array
from .errors import ConfigError, InputError, NumericalError

_REDUCTIONS = ("sum", "mean")


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax with the row max subtracted first (no overflow)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


class Loss:
    """Base class: subclass and define ``_value`` and ``_delta`` on summed terms.

    Parameters
    ----------
    reduction : {"sum", "mean"}
        Sum the per-example losses (the notes' convention) or average them.
    """

    name = "loss"
    #: "float" targets are arrays shaped like z (or (B,) when z has one column);
    #: "labels" targets are integer class ids of shape (B,) (or a column, (B, 1)).
    targets = "float"

    def __init__(self, reduction: str = "sum") -> None:
        if reduction not in _REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}.")
        self.reduction = reduction

    # -- to implement --------------------------------------------------------------
    def _value(self, z: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def _delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------
    def check_targets(self, y, n_out: int, n_rows: int, dtype=np.float64) -> np.ndarray:
        """Validate targets for a batch of ``n_rows`` outputs of width ``n_out``; return them normalised."""
        if self.targets == "labels":
            return _check_labels(y, n_out, n_rows, self.name)
        return _check_float_targets(y, n_out, n_rows, self.name, dtype)

    def _scalar(self, v) -> float:
        arr = np.asarray(v)
        if arr.size != 1 or arr.dtype.kind not in "biuf":
            raise ConfigError(f"loss {self.name!r} value must be one real number, got {type(v).__name__}"
                              f"{f' of shape {arr.shape}' if arr.ndim else ''}.")
        return float(arr.reshape(()))

    def value(self, z: np.ndarray, y: np.ndarray) -> float:
        """The batch loss."""
        v = self._scalar(self._value(z, y))
        return v / z.shape[0] if self.reduction == "mean" and z.shape[0] else v

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """dL/dz, shaped like ``z``."""
        d = np.asarray(self._delta(z, y), dtype=z.dtype)
        if d.shape != z.shape:
            raise ConfigError(f"loss {self.name!r} delta must have shape {z.shape}, got {d.shape}.")
        if self.reduction == "mean" and z.shape[0]:
            d = d / z.shape[0]
        return d

    def value_and_delta(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Both at once; losses that share work between them (a softmax) override :meth:`_value_and_delta`."""
        v, d = self._value_and_delta(z, y)
        v = self._scalar(v)
        d = user_array(d, f"loss {self.name!r} delta").astype(z.dtype, copy=False)
        if d.shape != z.shape:
            raise ConfigError(f"loss {self.name!r} delta must have shape {z.shape}, got {d.shape}.")
        if self.reduction == "mean" and z.shape[0]:
            return v / z.shape[0], d / z.shape[0]
        return v, d

    def _value_and_delta(self, z: np.ndarray, y: np.ndarray):
        return self._value(z, y), self._delta(z, y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def _check_labels(y, n_out: int, n_rows: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} needs {n_rows} integer labels; numpy could not make one array of the "
                         f"{type(y).__name__} given ({str(exc).split('.')[0]}).") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise InputError(f"{name} needs {n_rows} integer labels (shape ({n_rows},) or ({n_rows}, 1)), got shape "
                         f"{arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{name} needs integer class labels, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_out):
        raise InputError(
            f"{name} labels must lie in [0, {n_out}) for {n_out} outputs, got labels in [{arr.min()}, {arr.max()}]."
        )
    return arr


def _check_float_targets(y, n_out: int, n_rows: int, name: str, dtype) -> np.ndarray:
    raw, arr = as_real(y, dtype, f"{name} targets")
    if arr.ndim == 1 and n_out == 1:
        arr = arr[:, None]
    if arr.shape != (n_rows, n_out):
        raise InputError(f"{name} targets must have shape ({n_rows}, {n_out}), got {arr.shape}.")
    check_finite(raw, arr, f"the target array of {name}")
    return arr


class HalfSquaredError(Loss):
    """L = 0.5 * sum over the batch of ||z - y||^2 (N2, step 2); dL/dz = z - y."""

    name = "half_squared_error"

    def _value(self, z, y):
        r = z - y
        return 0.5 * float(np.vdot(r, r))

    def _delta(self, z, y):
        return z - y


class SoftmaxCrossEntropy(Loss):
    """L = sum_i [logsumexp(z_i) - z_i[y_i]] for integer labels y; dL/dz = softmax(z) - onehot(y)."""

    name = "softmax_cross_entropy"
    targets = "labels"

    def _value(self, z, y):
        # imported on first use: scipy.special would add ~50 ms to `import oocnet`
        from scipy.special import logsumexp

        rows = np.arange(z.shape[0])
        return float(np.sum(logsumexp(z, axis=1) - z[rows, y]))

    def _delta(self, z, y):
        d = softmax(z)
        d[np.arange(z.shape[0]), y] -= 1.0
        return d

    def _value_and_delta(self, z, y):
        # One exponentiation serves both: log-sum-exp for the value, softmax for the delta.
        rows = np.arange(z.shape[0])
        m = z.max(axis=1, keepdims=True)
        e = np.exp(z - m)
        total = e.sum(axis=1, keepdims=True)
        value = float(np.sum(np.log(total[:, 0]) + m[:, 0] - z[rows, y]))
        e /= total
        e[rows, y] -= 1.0
        return value, e


class SoftmaxMarginHinge(Loss):
    """N3's softmax-margin hinge: J_i = sum_{j != y_i} max(0, p_j - p_{y_i} + margin), p = softmax(z_i).

    Its gradient is taken through the softmax Jacobian without forming it: with
    g = dJ/dp (g_k = [x_k > 0] for k != y, g_y = -sum_{j != y} [x_j > 0], where
    x_j = p_j - p_y + margin), dJ/dz = p * (g - <g, p>), O(V) per example.

    Parameters
    ----------
    margin : float
        The desired gap between the correct class's probability and the others' (>= 0).
    reduction : {"sum", "mean"}
    """

    name = "softmax_margin_hinge"
    targets = "labels"

    def __init__(self, margin: float = 1.0, reduction: str = "sum") -> None:
        super().__init__(reduction)
        # A number, as the optimizers' hyperparameters are: not "1" or True (which float() would take)
        if isinstance(margin, (bool, np.bool_)) or not isinstance(margin, numbers.Real) or not np.isfinite(margin) \
                or margin < 0:
            raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}.")
        self.margin = float(margin)

    def _terms(self, z, y):
        p = softmax(z)
        rows = np.arange(z.shape[0])
        x = p - p[rows, y][:, None] + self.margin
        x[rows, y] = 0.0  # j == y is not a term of the sum
        return p, rows, x

    def _value(self, z, y):
        _, _, x = self._terms(z, y)
        return float(np.sum(np.maximum(x, 0.0)))

    def _delta(self, z, y):
        p, rows, x = self._terms(z, y)
        g = (x > 0).astype(z.dtype)
        g[rows, y] = -g.sum(axis=1)
        return p * (g - np.einsum("ij,ij->i", g, p)[:, None])

    def __repr__(self) -> str:
        return f"SoftmaxMarginHinge(margin={self.margin!r}, reduction={self.reduction!r})"


class CustomLoss(Loss):
    """A loss from two user functions.

    Parameters
    ----------
    value : callable
        ``value(z, y) -> float``, the batch loss (already reduced as you wish).
    delta : callable
        ``delta(z, y) -> array`` shaped like z: the dL/dz backward starts from.
        It need not be the true derivative of ``value``.
    name : str
    targets : {"float", "labels"}
        How targets are validated: float arrays shaped like the output, or integer labels.
    """

    def __init__(self, value: Callable, delta: Callable, name: str = "custom", targets: str = "float") -> None:
        super().__init__("sum")
        if not callable(value) or not callable(delta):
            raise ConfigError("CustomLoss needs callable value and delta functions.")
        if targets not in ("float", "labels"):
            raise ConfigError(f"targets must be 'float' or 'labels', got {targets!r}.")
        self._value_fn, self._delta_fn = value, delta
        self.name, self.targets = str(name), targets

    def _value(self, z, y):
        return self._value_fn(z, y)

    def _delta(self, z, y):
        d = self._delta_fn(z, y)
        try:
            bad = not np.all(np.isfinite(d))
        except (TypeError, ValueError):  # not numbers: value_and_delta names what it got
            return d
        if bad:  # checked before backward begins: nothing is updated on a NaN delta
            raise NumericalError(f"loss {self.name!r}: its delta returned NaN or inf; parameters were not changed.")
        return d

    def __repr__(self) -> str:
        return f"CustomLoss(name={self.name!r})"


class _SampledLoss(Loss):
    """Base of losses over sampled candidates: only an :class:`~oocnet.Output` layer can compute them."""

    targets = "labels"
    sampled = True

    def __init__(self, sampler, reduction: str = "sum") -> None:
        super().__init__(reduction)
        from .sampling import UnigramSampler

        if not isinstance(sampler, UnigramSampler):
            raise ConfigError(f"sampler must be an oocnet.UnigramSampler, got {type(sampler).__name__}.")
        self.sampler = sampler

    def _value(self, z, y):
        raise ConfigError(f"{type(self).__name__} needs an oc.Output layer as the model's last layer.")

    _delta = _value


class SampledSoftmax(_SampledLoss):
    """Sampled softmax cross-entropy with the log-Q correction (training only; see :mod:`oocnet.sampling`).

    Each step draws ``n_samples`` classes from ``sampler`` (shared by the batch);
    only the true and sampled classes' rows of the output layer are read and
    updated.  ``model.evaluate`` and ``predict`` use the exact (streamed) softmax.

    Parameters
    ----------
    n_samples : int
        Classes drawn per step.
    sampler : UnigramSampler
        The proposal Q.
    """

    name = "sampled_softmax"

    def __init__(self, n_samples: int, sampler, reduction: str = "sum") -> None:
        super().__init__(sampler, reduction)
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}.")
        self.n_samples = int(n_samples)


class NegativeSampling(_SampledLoss):
    """word2vec's negative-sampling objective (training only; see :mod:`oocnet.sampling`).

    Parameters
    ----------
    k : int
        Negatives drawn per example.
    sampler : UnigramSampler
        Q, typically ``UnigramSampler(counts, power=0.75)``.
    """

    name = "negative_sampling"

    def __init__(self, k: int, sampler, reduction: str = "sum") -> None:
        super().__init__(sampler, reduction)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}.")
        self.k = int(k)


LOSSES: dict[str, type[Loss]] = {
    c.name: c for c in (HalfSquaredError, SoftmaxCrossEntropy, SoftmaxMarginHinge)
}


def get_loss(loss: str | Loss) -> Loss:
    """Return ``loss`` if it is a Loss, or a default-constructed loss of that name."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ConfigError(f"loss must be one of {', '.join(sorted(LOSSES))} or an oocnet.Loss, got {loss!r}.")


__all__ = [
    "Loss",
    "HalfSquaredError",
    "SoftmaxCrossEntropy",
    "SoftmaxMarginHinge",
    "CustomLoss",
    "SampledSoftmax",
    "NegativeSampling",
    "LOSSES",
    "get_loss",
    "softmax",
]
