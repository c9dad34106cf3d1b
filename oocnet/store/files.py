"""The files of disk stores, as whole stores: which backend a path means, which files a store has,
whether a path holds an oocnet store, deleting one, and its bytes on disk.

Used by the model (to remove a store it has just created and failed to fill) and by the
command line (``--overwrite``, ``oocnet inspect``); the backends themselves never need it.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from .durable import LAZY_LEFTOVER, acquire_lock


def store_backend(path: Path, backend: str | None = None) -> str:
    """The backend a store path means (as :func:`oocnet.open_store` decides)."""
    from . import _backend_for

    return backend or _backend_for(path)


def store_files(path, backend: str | None = None) -> list[Path]:
    """The files of a disk store that exist: its data, commit record, journal, lock and row bitmaps."""
    p = Path(path)
    if store_backend(p, backend) == "hdf5":
        files = [f for f in (p, p.with_name(p.name + ".commit.json"), p.with_name(p.name + ".journal"),
                             p.with_name(p.name + ".lock")) if f.exists()]
        # which rows of each lazily created table were written (see oocnet.store.durable)
        from .hdf5 import lazy_prefix

        prefix = lazy_prefix(p)
        return files + sorted(f for f in p.parent.glob(glob.escape(prefix) + "*")
                              if LAZY_LEFTOVER.fullmatch(f.name[len(prefix):]))
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.is_file())


def _is_oocnet_h5(p: Path) -> bool:
    """Whether the file ``p`` is an oocnet HDF5 store (not just any HDF5 file, e.g. the user's data)."""
    import h5py

    if p.with_name(p.name + ".commit.json").is_file():
        return True
    try:
        with h5py.File(p, "r", locking=False) as f:
            return "oocnet_format" in f.attrs
    except (OSError, ValueError):
        return False


def store_exists(path, backend: str | None = None) -> bool:
    """Whether ``path`` holds a store (a memmap folder with a manifest, or an oocnet HDF5 file).

    Raises ConfigError if ``path`` is a file or folder that is not an oocnet store
    (so that training neither writes into nor deletes, say, a data file).
    """
    p = Path(path)
    if store_backend(p, backend) == "hdf5":
        if p.is_dir():
            raise ConfigError(f"{p} is a folder, not an .h5 file; an HDF5 store is a file.")
        if p.is_file() and not _is_oocnet_h5(p):
            raise ConfigError(f"{p} exists and is not an oocnet store (an HDF5 file without oocnet's format "
                              f"mark, or not HDF5 at all); choose another store path.")
        return p.is_file()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p} is a file; a memmap store is a folder (use a path ending in .h5 for HDF5).")
    return (p / "manifest.json").is_file()


def remove_store(path, backend: str | None = None) -> None:
    """Delete a disk store: refuses a path that is not an oocnet store, and a store a writer holds."""
    p = Path(path)
    hdf5 = store_backend(p, backend) == "hdf5"
    if not store_exists(p, backend):
        if not hdf5 and p.is_dir() and any(p.iterdir()):
            raise ConfigError(f"{p} is not an oocnet store (no manifest.json); not deleting it.")
        if not (hdf5 and store_files(p, "hdf5")):
            return  # nothing there (an HDF5 store's side files without its file are deleted below)
    # Held while deleting: a running writer makes this fail naming its pid, and none can start.
    fd = acquire_lock(p.with_name(p.name + ".lock") if hdf5 else p / "lock", p)
    try:
        if hdf5:
            for f in store_files(p, "hdf5"):
                f.unlink()
        else:
            shutil.rmtree(p)
    finally:
        os.close(fd)


def disk_bytes(path, backend: str | None = None) -> int:
    """Bytes the store's files take on disk (allocated blocks, so sparse files count what they use)."""
    total = 0
    for f in store_files(path, backend):
        try:
            st = f.stat()
        except FileNotFoundError:  # removed since the listing: a writer's journal or temp file
            continue
        total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


__all__ = ["store_backend", "store_files", "store_exists", "remove_store", "disk_bytes"]
