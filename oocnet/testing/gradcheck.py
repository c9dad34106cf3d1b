"""Gradient checking by central differences, in float64.

Reusable in your own tests::

    from oocnet.testing import gradcheck, gradcheck_model
    err = gradcheck(lambda x: f(x), x0, analytic_grad)      # relative error
    errs = gradcheck_model(model, X, y, loss)                # {key: relative error}
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ConfigError


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of scalar ``f`` at ``x`` (float64).

    ``x`` is perturbed in place, one element at a time, and restored afterwards
    (any memory layout; a read-only ``x`` is copied first).
    """
    x = np.asarray(x)
    if x.dtype != np.float64:
        raise ConfigError(f"gradcheck needs float64 inputs for accuracy, got {x.dtype}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (np.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps must be a finite number > 0, got {eps!r}.")
    if not x.flags.writeable:
        x = x.copy()
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):  # by index, not through reshape(-1): that copies a non-C-ordered x
        old = x[i]
        x[i] = old + eps
        fp = _scalar(f(x))
        x[i] = old - eps
        fm = _scalar(f(x))
        x[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad


def _scalar(value) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ConfigError(f"the function under gradcheck must return one real number, got {type(value).__name__} "
                          f"of shape {arr.shape}.")
    return float(arr.reshape(()))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / max(||a|| + ||b||, tiny)`` over all elements (0 when both are zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / max(denom, np.finfo(np.float64).tiny))


def gradcheck(f: Callable[[np.ndarray], float], x: np.ndarray, analytic: np.ndarray, eps: float = 1e-6) -> float:
    """Relative error between ``analytic`` and the central-difference gradient of ``f`` at ``x``."""
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != np.shape(x):
        raise ConfigError(f"analytic gradient must have shape {np.shape(x)}, got {analytic.shape}.")
    return relative_error(analytic, numerical_gradient(f, np.array(x, dtype=np.float64), eps))


def gradcheck_model(model, X, y, loss, eps: float = 1e-6) -> dict[str, float]:
    """Per parameter, the relative error of ``model.gradients`` against central differences of the loss.

    The model must be float64 and small (every parameter is perturbed one element
    at a time); its parameters are restored afterwards.
    """
    if model.dtype != np.float64:
        raise ConfigError(f"gradcheck_model needs a float64 model, got {model.dtype}.")
    analytic = model.gradients(X, y, loss)
    params = model.state_dict()
    errors = {}
    try:
        for key, value in params.items():
            work = dict(params)

            def f(v, key=key, work=work):
                work[key] = v
                model.load_state_dict(work)
                return model.evaluate(X, y, loss)

            errors[key] = gradcheck(f, value.copy(), analytic[key], eps)
    finally:
        model.load_state_dict(params)
    return errors


__all__ = ["numerical_gradient", "relative_error", "gradcheck", "gradcheck_model"]
