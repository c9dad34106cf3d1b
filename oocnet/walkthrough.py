"""The notes' worked example (seed file, "The output log"), rebuilt with the public API.

Recovered from the log's numbers:

* X = [[0.75, 0.8], [0.2, 0.05], [-0.75, 0.8], [0.2, -0.05]], y = [1, 1, -1, -1];
* W = [[0.6, 0.7, 0.0], [0.01, 0.43, 0.88]] (2x3), w = [0.02, 0.03, 0.09] (3x1), no biases;
* hidden layer: z = tanh(s) forward, but backward uses relu's derivative [s > 0];
* output layer: identity; the printed loss is 0.5 * sum (s_out - y)^2, but
  delta_out = (tanh(s_out) - y) * (1 - tanh(s_out));
* plain SGD with alpha = 0.015 on the batch-summed gradient.

Both quirks are expressed through :class:`~oocnet.Activation` and
:class:`~oocnet.CustomLoss`; the engine has no special case for them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .activations import Activation
from .layers import Dense
from .losses import CustomLoss
from .model import Sequential
from .optim import SGD

X = np.array([[0.75, 0.8], [0.2, 0.05], [-0.75, 0.8], [0.2, -0.05]])
Y = np.array([[1.0], [1.0], [-1.0], [-1.0]])
W_HIDDEN = np.array([[0.6, 0.7, 0.0], [0.01, 0.43, 0.88]])
W_OUT = np.array([[0.02], [0.03], [0.09]])
ALPHA = 0.015

#: tanh forward, relu's derivative backward (a surrogate gradient).
TANH_WITH_RELU_DERIVATIVE = Activation("tanh, relu'", np.tanh, lambda s: (s > 0).astype(s.dtype))

#: printed loss 0.5*sum((z - y)^2); backward starts from (tanh(z) - y) * (1 - tanh(z)).
NOTES_LOSS = CustomLoss(
    value=lambda z, y: 0.5 * float(np.sum((z - y) ** 2)),
    delta=lambda z, y: (np.tanh(z) - y) * (1.0 - np.tanh(z)),
    name="notes_loss",
)


def build() -> Sequential:
    """The worked example's 2-3-1 network, in float64 and in RAM."""
    model = Sequential(
        [
            Dense(2, 3, activation=TANH_WITH_RELU_DERIVATIVE, bias=False, init=W_HIDDEN),
            Dense(3, 1, activation="identity", bias=False, init=W_OUT),
        ],
        dtype="float64",
    )
    return model


def run(iterations: int = 3) -> list[dict]:
    """Train ``iterations`` steps; return per iteration s, z, s_out, z_out, loss, deltas and weights."""
    model = build()
    opt = SGD(lr=ALPHA)
    records = []
    for _ in range(iterations):
        trace: dict = {}
        loss = model.train_step(X, Y, NOTES_LOSS, opt, trace=trace)
        sd = model.state_dict()
        records.append({
            "s": trace["s"][0], "z": trace["z"][0], "s_out": trace["s"][1], "z_out": trace["z"][1],
            "loss": loss, "delta_out": trace["delta"][1], "delta_1": trace["delta"][0],
            "w": sd["dense_1/W"], "W": sd["dense_0/W"],
        })
    model.close()
    return records


def _matrix(a: np.ndarray) -> str:
    return "\n".join("\t".join(f"{v:.4f}" for v in row) for row in np.atleast_2d(a))


def format_log(records: list[dict], write: Callable[[str], None] = print) -> None:
    """Print the records in the layout of the notes' log."""
    for k, r in enumerate(records, start=1):
        write("-----\n-----\n-----\n")
        write(f"Iteration # {k}\n")
        write("Forward pass\n")
        for name in ("s", "z", "s_out", "z_out"):
            write(f"{name} =\n\n{_matrix(r[name])}\n")
        write(f"loss: {r['loss']:.6f}\n")
        write("Backward pass\n")
        for name in ("delta_out", "delta_1"):
            write(f"{name} =\n\n{_matrix(r[name])}\n")
        write("Updated parameters\n")
        write(f"w =\n\n{_matrix(r['w'])}\n")
        write(f"W =\n\n{_matrix(r['W'])}\n")
