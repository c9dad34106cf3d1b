"""Parameter stores: where parameters and optimizer state live.

``open_store(path)`` picks the backend from the path:

* ``None`` -- :class:`MemoryStore`, in RAM;
* a path ending in ``.h5`` or ``.hdf5`` -- :class:`HDF5Store`, one HDF5 file;
* any other path -- :class:`MemmapStore`, a folder of ``.npy`` row shards.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .base import ParamInfo, Store
from .files import remove_store, store_files
from .memory import MemoryStore

BACKENDS = ("memory", "memmap", "hdf5")


def _backend_for(path) -> str:
    if path is None:
        return "memory"
    suffix = Path(os.fspath(path)).suffix.lower()
    return "hdf5" if suffix in (".h5", ".hdf5") else "memmap"


def open_store(path=None, *, backend: str | None = None, read_only: bool = False, **options) -> Store:
    """Open (or create) a parameter store.

    Parameters
    ----------
    path : str, os.PathLike or None
        ``None`` for RAM; ``*.h5`` / ``*.hdf5`` for an HDF5 file; otherwise a folder
        of memmap shards.  Missing files or folders are created (unless read-only).
    backend : {"memory", "memmap", "hdf5"}, optional
        Override the choice made from ``path``.
    read_only : bool
        Open for reading only.
    **options
        Passed to the backend (e.g. ``shard_bytes`` for memmap).

    Returns
    -------
    Store
    """
    name = backend if backend is not None else _backend_for(path)
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if name == "memory":
        if path is not None:
            raise ConfigError(f"the memory backend takes no path, got {os.fspath(path)!r}.")
        return MemoryStore(read_only=read_only, **options)
    if path is None:
        raise ConfigError(f"the {name} backend needs a path, got None.")
    if name == "memmap":
        from .memmap import MemmapStore

        return MemmapStore(path, read_only=read_only, **options)
    from .hdf5 import HDF5Store

    return HDF5Store(path, read_only=read_only, **options)


__all__ = ["open_store", "remove_store", "store_files", "Store", "ParamInfo", "MemoryStore", "BACKENDS"]
