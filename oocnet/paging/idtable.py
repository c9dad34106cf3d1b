"""A vectorised hash map from int64 row ids to int32 slots (open addressing, linear probing).

A row cache must find, for each of a batch's few thousand row ids, the slot
holding it -- without a V-sized index (V may be 10^7) and without a Python loop
per id.  This table's size follows the number of entries it may hold (the
cache's capacity), not the vocabulary, and every operation is a handful of
numpy passes over the batch: one pass per probe round, and with a load factor
below 0.7 almost every id is settled in one or two rounds.

Deleted entries leave tombstones so that probe chains stay intact; the table
is rebuilt when live entries plus tombstones pass the load limit.
"""

from __future__ import annotations

import numpy as np

_EMPTY = -1
_TOMB = -2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads consecutive ids
_LOAD = 0.7


class IdTable:
    """Map distinct non-negative int64 ids to int32 values.

    Parameters
    ----------
    capacity : int
        Most entries held at once; the table allocates about ``capacity / 0.35`` slots
        of 12 bytes.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._alloc(self._size_for(self.capacity))

    @staticmethod
    def _size_for(capacity: int) -> int:
        size = 16
        while size * _LOAD < 2 * capacity:
            size *= 2
        return size

    @classmethod
    def nbytes_for(cls, capacity: int) -> int:
        """:attr:`nbytes` of a table for ``capacity`` ids, without building it."""
        return cls._size_for(int(capacity)) * (8 + 4)  # keys int64, values int32

    def _alloc(self, size: int) -> None:
        self.keys = np.full(size, _EMPTY, dtype=np.int64)
        self.vals = np.zeros(size, dtype=np.int32)
        self.mask = size - 1
        self._shift = np.uint64(64 - size.bit_length() + 1)
        self.n = 0
        self.tombs = 0

    @property
    def nbytes(self) -> int:
        """Bytes the table holds."""
        return self.keys.nbytes + self.vals.nbytes

    def _home(self, ids: np.ndarray) -> np.ndarray:
        return ((ids.astype(np.uint64) * _GOLDEN) >> self._shift).astype(np.int64) & self.mask

    def _find(self, ids: np.ndarray) -> np.ndarray:
        """Positions holding ``ids`` (-1 where absent)."""
        pos = self._home(ids)
        found = np.full(ids.size, -1, dtype=np.int64)
        active = np.arange(ids.size)
        while active.size:
            p = pos[active]
            k = self.keys[p]
            hit = k == ids[active]
            found[active[hit]] = p[hit]
            go_on = ~hit & (k != _EMPTY)
            active = active[go_on]
            pos[active] = (p[go_on] + 1) & self.mask
        return found

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The value of each id, or -1 where the id is absent."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = self._find(ids)
        out = np.full(ids.size, -1, dtype=np.int64)
        present = pos >= 0
        out[present] = self.vals[pos[present]]
        return out

    def insert(self, ids: np.ndarray, vals: np.ndarray) -> None:
        """Add ``ids`` (distinct, none present yet) with their values."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return
        if self.n + ids.size > self.capacity:
            raise ValueError(f"IdTable holds at most {self.capacity} ids; {self.n} + {ids.size} asked.")
        if (self.n + self.tombs + ids.size) > _LOAD * self.keys.size:
            self._rebuild()
        vals = np.asarray(vals, dtype=np.int32)
        pos = self._home(ids)
        placed = np.zeros(ids.size, dtype=bool)
        active = np.arange(ids.size)
        while active.size:
            p = pos[active]
            free = self.keys[p] < 0  # empty or tombstone
            if free.any():
                cand, pc = active[free], p[free]
                # Several ids may probe the same free position in one round: the first wins,
                # the others find it taken next round and move on.
                uniq, first = np.unique(pc, return_index=True)
                win = cand[first]
                self.tombs -= int(np.count_nonzero(self.keys[uniq] == _TOMB))
                self.keys[uniq] = ids[win]
                self.vals[uniq] = vals[win]
                placed[win] = True
            stay = ~free
            pos[active[stay]] = (p[stay] + 1) & self.mask
            active = active[~placed[active]]
        self.n += ids.size

    def delete(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (each must be present)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return
        pos = self._find(ids)
        if np.any(pos < 0):
            raise KeyError(f"ids not in the table: {ids[pos < 0][:5].tolist()}")
        self.keys[pos] = _TOMB
        self.n -= ids.size
        self.tombs += ids.size

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, values) held."""
        live = self.keys >= 0
        return self.keys[live].copy(), self.vals[live].copy()

    def clear(self) -> None:
        """Remove everything."""
        self.keys.fill(_EMPTY)
        self.n = self.tombs = 0

    def _rebuild(self) -> None:
        ids, vals = self.items()
        self.keys.fill(_EMPTY)
        self.n = self.tombs = 0
        if ids.size:
            self.insert(ids, vals)

    def __len__(self) -> int:
        return self.n
