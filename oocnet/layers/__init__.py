"""Layers, one per module: each declares its parameters and computes on blocks the pager hands it."""

from .base import Layer, ParamAccess, ParamSpec
from .dense import Dense
from .embedding import Embedding

__all__ = ["Layer", "ParamSpec", "ParamAccess", "Dense", "Embedding"]
