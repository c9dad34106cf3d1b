"""Layers, one per module: each declares its parameters and computes on blocks the pager hands it."""

from .base import Layer, ParamAccess, ParamSpec
from .dense import Dense
from .embedding import Embedding
from .output import Output
from .factorized import FactorizedDense, FactorizedEmbedding

__all__ = ["Layer", "ParamSpec", "ParamAccess", "Dense", "Embedding", "Output", "FactorizedDense", "FactorizedEmbedding"]
