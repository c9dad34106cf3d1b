"""The in-RAM store: the default when a model is given no path.

Parameters are plain numpy arrays in a dict.  It is ``zero_copy``: the pager
works on live views instead of copies, so a model in RAM pays nothing for the
paging machinery.  Nothing survives :meth:`close`.
"""

from __future__ import annotations

import numpy as np

from ..errors import StoreIOError
from .base import ParamInfo, RowInitializer, Store, chunk_rows, format_bytes


class MemoryStore(Store):
    """Parameters held in RAM as numpy arrays (not persistent)."""

    backend = "memory"
    persistent = False
    zero_copy = True

    def __init__(self, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self._arrays: dict[str, np.ndarray] = {}

    def _create(self, info: ParamInfo, init: RowInitializer | None) -> None:
        try:
            arr = np.zeros(info.shape, dtype=info.dtype)
        except MemoryError:
            raise StoreIOError(f"parameter {info.key!r} needs {format_bytes(info.nbytes)}, more than this "
                               f"machine can give a store in RAM; use a disk store (store=PATH).") from None
        if init is not None:
            for a, b in chunk_rows(info):
                arr[a:b] = init(a, b)
        self._arrays[info.key] = arr

    def _keys(self) -> list[str]:
        return list(self._arrays)

    def _has(self, key: str) -> bool:
        return key in self._arrays

    def _info(self, key: str) -> ParamInfo:
        arr = self._arrays[key]
        return ParamInfo(key, arr.shape, arr.dtype)

    def _read_rows(self, key, start, stop, out):
        out[...] = self._arrays[key][start:stop]

    def _read_index(self, key, rows, out):
        np.take(self._arrays[key], rows, axis=0, out=out)

    def _write_rows(self, key, start, value):
        self._arrays[key][start : start + value.shape[0]] = value

    def _write_index(self, key, rows, value):
        self._arrays[key][rows] = value

    def _delete(self, key):
        del self._arrays[key]

    def _close(self):
        self._arrays.clear()

    def view_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """A live view of rows ``[start, stop)``; writes to it change the store."""
        info = self._checked_info(key)
        a, b = self._check_range(info, start, stop)
        view = self._arrays[key][a:b]
        if self.read_only:
            view = view.view()
            view.flags.writeable = False
        return view
