"""Activation functions: a forward f(s) and its derivative f'(s), by name or user-made.

An :class:`Activation` is a pair of pure functions of arrays.  The built-ins
compute the derivative from the forward *output* z where that is cheaper
(tanh: 1 - z^2; sigmoid: z(1 - z)), as scikit-learn does; a user-made one is
any pair ``forward(s)``, ``derivative(s)`` -- the derivative need not be the
true one (surrogate gradients, straight-through estimators)::

    tanh_fwd_relu_bwd = oc.Activation("tanh/relu'", np.tanh, lambda s: (s > 0).astype(s.dtype))
    oc.Dense(2, 3, activation=tanh_fwd_relu_bwd)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._arrays import user_array
from .errors import ConfigError


class Activation:
    """An elementwise activation: ``z = forward(s)`` and ``f'(s) = derivative(s)``.

    Parameters
    ----------
    name : str
        Shown in reprs and error messages.
    forward : callable
        ``forward(s) -> z``, same shape as ``s``.
    derivative : callable
        ``derivative(s) -> f'(s)``, same shape as ``s``; used backward as
        ``delta = upstream * derivative(s)`` (N2).
    """

    def __init__(self, name: str, forward: Callable[[np.ndarray], np.ndarray],
                 derivative: Callable[[np.ndarray], np.ndarray]) -> None:
        if not callable(forward) or not callable(derivative):
            raise ConfigError(
                f"an activation needs callable forward and derivative, got "
                f"{type(forward).__name__} and {type(derivative).__name__}."
            )
        self.name = str(name)
        self._forward = forward
        self._derivative = derivative

    def forward(self, s: np.ndarray) -> np.ndarray:
        """z = f(s)."""
        return self._checked(self._forward(s), s, "forward")

    def derivative(self, s: np.ndarray) -> np.ndarray:
        """f'(s)."""
        return self._checked(self._derivative(s), s, "derivative")

    def grad(self, s: np.ndarray, z: np.ndarray) -> np.ndarray:
        """f'(s), given also z = f(s) so built-ins can reuse it."""
        return self.derivative(s)

    def _checked(self, out, s: np.ndarray, what: str) -> np.ndarray:
        out = user_array(out, f"activation {self.name!r} {what}")
        if out.shape != s.shape:
            raise ConfigError(
                f"activation {self.name!r} {what} must return shape {s.shape}, got {out.shape}."
            )
        return out.astype(s.dtype, copy=False)

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


class _Identity(Activation):
    def __init__(self):
        super().__init__("identity", lambda s: s, np.ones_like)

    def forward(self, s):
        return s

    def grad(self, s, z):
        return np.ones_like(s)


class _Tanh(Activation):
    def __init__(self):
        super().__init__("tanh", np.tanh, lambda s: 1.0 - np.tanh(s) ** 2)

    def forward(self, s):
        return np.tanh(s)

    def grad(self, s, z):
        return 1.0 - z * z


class _Relu(Activation):
    def __init__(self):
        super().__init__("relu", lambda s: np.maximum(s, 0), lambda s: (s > 0).astype(s.dtype))

    def forward(self, s):
        return np.maximum(s, 0)

    def grad(self, s, z):
        return (s > 0).astype(s.dtype)


def _sigmoid(s: np.ndarray) -> np.ndarray:
    # The two-branch form never exponentiates a large positive number (no overflow).
    out = np.empty_like(s)
    pos = s >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-s[pos]))
    e = np.exp(s[~pos])
    out[~pos] = e / (1.0 + e)
    return out


class _Sigmoid(Activation):
    def __init__(self):
        super().__init__("sigmoid", _sigmoid, lambda s: _sigmoid(s) * (1.0 - _sigmoid(s)))

    def forward(self, s):
        return _sigmoid(s)

    def grad(self, s, z):
        return z * (1.0 - z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (_Identity(), _Tanh(), _Relu(), _Sigmoid())
}


def get_activation(activation: str | Activation | None) -> Activation:
    """Return the activation named ``activation`` (or ``activation`` itself if one).

    ``None`` means identity.  Unknown names raise ConfigError listing the known ones.
    """
    if activation is None:
        return ACTIVATIONS["identity"]
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ConfigError(
        f"activation must be one of {', '.join(sorted(ACTIVATIONS))} or an oocnet.Activation, "
        f"got {activation!r}."
    )


__all__ = ["Activation", "ACTIVATIONS", "get_activation"]
