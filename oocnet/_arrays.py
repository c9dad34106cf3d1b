"""Turning what users pass as a batch or as targets into real-valued numpy arrays, or a clear error."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, InputError


def as_real(x, dtype, what: str, error: type[Exception] = InputError) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, arr)``: ``x`` as numpy made it, and as a ``dtype`` array.

    Input numpy cannot make one array of (ragged nested lists) is refused with
    ``error``; text, objects that are not numbers and complex values with
    :class:`InputError`.  Casting does not warn: values beyond ``dtype``'s range
    become inf, which the callers' finiteness checks name.
    """
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be a numeric array; numpy could not make one array of the "
                    f"{type(x).__name__} given ({str(exc).split('.')[0]}).") from None
    if raw.dtype.kind == "c":
        raise InputError(f"{what} must be real numbers, got complex values.")
    if raw.dtype.kind not in "biuf" and not (raw.dtype.kind == "O" and raw.size == 0):
        if raw.dtype.kind != "O":
            kind = "text" if raw.dtype.kind in "US" else "values"
            raise InputError(f"{what} must be numeric, got {kind} (dtype {raw.dtype}).")
        try:  # objects: numbers (e.g. from a list mixing ints and numpy scalars) are fine
            raw = raw.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} must be numeric, got objects that are not numbers ({exc}).") from None
    with np.errstate(over="ignore", invalid="ignore"):
        return raw, raw.astype(dtype, copy=False)


def check_finite(raw: np.ndarray, arr: np.ndarray, what: str) -> None:
    """:class:`InputError` unless ``arr`` (``raw`` cast to its dtype) is all finite.

    Values that were finite in ``raw`` but not after the cast are named as beyond the dtype's range;
    the others as NaN or inf.
    """
    if arr.dtype.kind != "f" or np.all(np.isfinite(arr)):
        return
    if np.all(np.isfinite(raw.astype(np.float64, copy=False))):
        raise InputError(f"{what} has values beyond the range of {arr.dtype.name} "
                         f"(largest {np.finfo(arr.dtype).max:.3g}).")
    raise InputError(f"{what} contains NaN or inf.")


def user_array(value, what: str) -> np.ndarray:
    """What a user's function returned (an activation's output, a loss's delta) as a real-valued array.

    :class:`ConfigError` (the function is at fault, not the data) if numpy cannot make one array of
    it, or its values are not real numbers (text, objects, complex).
    """
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be an array, got {type(value).__name__} ({str(exc).split('.')[0]}).") from None
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{what} must be real numbers, got dtype {arr.dtype}.")
    return arr
