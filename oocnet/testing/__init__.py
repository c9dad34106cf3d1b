"""Helpers users may reuse in their own tests: gradient checking and the store conformance suite."""

from .gradcheck import gradcheck, gradcheck_model, numerical_gradient, relative_error

__all__ = ["gradcheck", "gradcheck_model", "numerical_gradient", "relative_error"]

try:  # the conformance suite arrives with the disk stores
    from .store_suite import StoreConformance  # noqa: F401

    __all__.append("StoreConformance")
except ImportError:  # pragma: no cover
    pass
