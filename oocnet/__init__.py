"""oocnet: train neural networks whose parameters are larger than the RAM you allow them.

Parameters live in a store (RAM, a folder of memmap shards, or an HDF5 file)
and are paged into RAM one row tile at a time under a byte budget::

    import oocnet as oc

    model = oc.Sequential(
        [oc.Dense(2, 3, activation="tanh"), oc.Dense(3, 1)],
        store="run/params.h5", budget="256MiB", seed=0,
    )
    loss = model.train_step(X, y, oc.HalfSquaredError(), oc.SGD(lr=0.015))
"""

from . import compress, errors
from .activations import Activation, get_activation
from .errors import OocnetError
from .layers import Dense, Embedding, Output, FactorizedDense, FactorizedEmbedding, Layer
from .losses import (
    CustomLoss,
    HalfSquaredError,
    Loss,
    NegativeSampling,
    SampledSoftmax,
    SoftmaxCrossEntropy,
    SoftmaxMarginHinge,
)
from .sampling import UnigramSampler
from .model import Sequential
from .optim import SGD, Adagrad, Adam, Optimizer, RowwiseAdagrad
from .paging import Pager
from .store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Adagrad",
    "Adam",
    "CustomLoss",
    "Dense",
    "Embedding",
    "FactorizedDense",
    "FactorizedEmbedding",
    "HalfSquaredError",
    "Layer",
    "NegativeSampling",
    "Output",
    "SampledSoftmax",
    "UnigramSampler",
    "Loss",
    "OocnetError",
    "Optimizer",
    "Pager",
    "RowwiseAdagrad",
    "SGD",
    "Sequential",
    "SoftmaxCrossEntropy",
    "SoftmaxMarginHinge",
    "Store",
    "compress",
    "errors",
    "get_activation",
    "open_store",
]
