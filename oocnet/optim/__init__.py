"""Update rules, one per module, applied in place to parameter blocks and their state blocks."""

from .adagrad import Adagrad
from .adam import Adam
from .base import Optimizer
from .rowwise_adagrad import RowwiseAdagrad
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "RowwiseAdagrad", "Adam"]
