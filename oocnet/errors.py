"""The exception hierarchy.

Every error oocnet raises on purpose is an :class:`OocnetError`.  The subclasses
also derive from the closest built-in exception (``ValueError``, ``KeyError``,
``OSError``) so that code written against plain Python conventions still works.
Messages follow one template: what was expected, then what came.
"""

from __future__ import annotations


class OocnetError(Exception):
    """Base class of every error raised by oocnet."""


class ConfigError(OocnetError, ValueError):
    """An argument or configuration value is out of range or unknown."""


class ShapeError(OocnetError, ValueError):
    """Shapes do not chain or do not match what was declared."""


class InputError(OocnetError, ValueError):
    """A batch (inputs or targets) is malformed: wrong width, NaN/inf, bad labels."""


class BudgetError(OocnetError):
    """The memory budget is too small for what was asked of it."""


class NumericalError(OocnetError, FloatingPointError):
    """Parameters or losses became non-finite."""


class StoreError(OocnetError):
    """Base class of parameter-store errors."""


class StoreFormatError(StoreError):
    """A file on disk is not in the format (or version) this oocnet reads."""


class ChecksumError(StoreFormatError):
    """A block's data does not match the checksum recorded at the last commit."""


class StoreLockedError(StoreError):
    """The store is open for writing by another process (or another store object)."""


class StoreIOError(StoreError, OSError):
    """Reading or writing a store's files failed (disk full, permissions, ...).

    ``errno`` and ``filename`` are set where an OS error caused it.
    """

    def __str__(self) -> str:  # OSError would print "[Errno N] None" once errno is set
        return str(self.args[0]) if self.args else ""


class ReadOnlyError(StoreError):
    """A write was attempted on a store opened read-only."""


class ParameterNotFound(StoreError, KeyError):
    """A key names no parameter in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0]) if self.args else ""


class ParameterExists(StoreError):
    """A parameter is created under a key that is already taken."""


class StoreClosedError(StoreError):
    """The store was used after :meth:`close`."""


class OocnetWarning(UserWarning):
    """Something oocnet did that may not be what was meant (it goes on; ``warnings`` can make it an error)."""


__all__ = [
    "OocnetError",
    "ConfigError",
    "ShapeError",
    "InputError",
    "BudgetError",
    "NumericalError",
    "StoreError",
    "StoreFormatError",
    "ChecksumError",
    "StoreLockedError",
    "StoreIOError",
    "ReadOnlyError",
    "ParameterNotFound",
    "ParameterExists",
    "StoreClosedError",
    "OocnetWarning",
]
