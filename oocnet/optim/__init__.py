"""Update rules, one per module, applied in place to parameter blocks and their state blocks."""

from .adagrad import Adagrad
from .base import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad"]
