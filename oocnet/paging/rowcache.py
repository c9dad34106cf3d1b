"""The hot rows of a large table, kept in RAM between steps.

A sparse step touches a few thousand rows of a table of millions, and word
frequencies are Zipfian: most of a batch's ids are the same few thousand
frequent words every step.  Reading them from the store every step (one
``pread`` or HDF5 selection per row) would cost more than the arithmetic, so
the pager keeps each sparse parameter's recently used rows in a
:class:`RowCache` of fixed capacity:

* a lookup maps the batch's ids to cache slots (:class:`~oocnet.paging.idtable.IdTable`);
* misses are read from the store in one ``read_index`` call (sorted, so
  backends read contiguous runs) into free slots;
* when the cache is full, CLOCK (second-chance) picks victims: a slot used
  since the hand last passed gets another lap.  Victims are taken in batches of
  1/32 of the capacity (the spare ones wait on a free list for the next
  misses), so their write-back -- one ``write_index`` call, which on a durable
  store means one journal ``fsync`` -- happens every few steps, not every step;
* :meth:`flush` writes every dirty row back (commit, close, state_dict).

Everything is sized by the capacity, never by the vocabulary, and the arrays
are allocated once, so a step allocates nothing table-sized.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..store.base import Store
from .idtable import IdTable


def _resident_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array whose pages are made resident now, in one system call.

    The cache fills a few hundred fresh slots a step for its first thousands of
    steps; each new page was a page fault in the step (~10 us each on the
    project's VM: 0.4 ms a step at V = 10^6).  ``MAP_POPULATE`` maps every page up
    front -- 0.08 s for 200 MB, against 0.5 s of faults one page at a time.  The
    cache's bytes are its share of the budget either way.  Elsewhere: ``np.empty``.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes < (1 << 20):
        return np.empty(shape, dtype=dtype)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, ValueError):
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)  # the array keeps the map alive


class RowCache:
    """Up to ``capacity`` rows of ``key``, with write-back.

    Parameters
    ----------
    store : Store
        Where the rows live.
    key : str
        The parameter.
    capacity : int
        Rows held at most.
    """

    def __init__(self, store: Store, key: str, capacity: int) -> None:
        info = store.info(key)
        self.store, self.key = store, key
        self.capacity = int(max(1, min(capacity, info.n_rows)))
        self.data = _resident_empty((self.capacity, *info.row_shape), info.dtype)
        self.row_of_slot = np.full(self.capacity, -1, dtype=np.int64)
        self.dirty = np.zeros(self.capacity, dtype=bool)
        self.ref = np.zeros(self.capacity, dtype=bool)
        self.table = IdTable(self.capacity)
        self.hand = 0
        self.used = 0  # slots [0, used) have held a row
        self.free = np.empty(self.capacity, dtype=np.int64)  # evicted, empty slots: free[:n_free]
        self.n_free = 0
        self.batch = max(1, self.capacity // 32)
        # (rows, slots) of the last lookup: a step's scatter passes the rows its gather did,
        # and slots change hands only in a later lookup's evictions or in clear().
        self._memo: tuple | None = None
        self.bytes_read = self.bytes_written = self.hits = self.misses = 0

    @staticmethod
    def nbytes_for(capacity: int, row_nbytes: int) -> int:
        """:attr:`nbytes` of a cache of ``capacity`` rows of ``row_nbytes`` bytes, without building it."""
        # per slot: the row, row_of_slot (int64), dirty and ref (bool), free (int64); then the id table
        return int(capacity) * (int(row_nbytes) + 8 + 1 + 1 + 8) + IdTable.nbytes_for(capacity)

    @property
    def nbytes(self) -> int:
        """Bytes the cache may hold at full occupancy (its budget)."""
        return (self.data.nbytes + self.row_of_slot.nbytes + self.dirty.nbytes + self.ref.nbytes
                + self.free.nbytes + self.table.nbytes)

    def fits(self, n_rows: int) -> bool:
        """Whether a batch touching ``n_rows`` distinct rows can be served from the cache."""
        return n_rows <= self.capacity

    # -- slots ---------------------------------------------------------------------------
    def _victims(self, k: int, protect: np.ndarray) -> np.ndarray:
        """``k`` empty slots: never-used ones first, then freed ones, then CLOCK victims.

        CLOCK evicts at least ``batch`` rows at a time; dirty victims are written
        back, and the slots not needed now go on the free list.
        """
        fresh = np.arange(self.used, min(self.capacity, self.used + k))
        self.used += fresh.size
        need = k - fresh.size
        if need == 0:
            return fresh
        if self.n_free:
            take = min(need, self.n_free)
            self.n_free -= take
            fresh = np.concatenate([fresh, self.free[self.n_free : self.n_free + take]])
            need -= take
            if need == 0:
                return fresh
        guard = np.zeros(self.capacity, dtype=bool)
        guard[protect] = True
        guard[fresh] = True  # just handed out above: never a victim too (one slot for two rows)
        guard[self.free[: self.n_free]] = True  # already empty
        wanted = need
        need = max(need, min(self.batch, self.capacity - int(np.count_nonzero(guard))))
        chosen: list[np.ndarray] = []
        # At most two laps: the first clears reference bits, the second finds them clear.
        window = max(need * 2, 1024)
        scanned = 0
        while need > 0:
            idx = (self.hand + np.arange(min(window, self.capacity))) % self.capacity
            ok = ~self.ref[idx] & ~guard[idx]
            take = np.flatnonzero(ok)[:need]
            if take.size:
                picked = idx[take]
                chosen.append(picked)
                guard[picked] = True
                need -= take.size
                last = take[-1] + 1 if need == 0 else idx.size
            else:
                last = idx.size
            self.ref[idx[:last]] = False  # second chance used up for what the hand passed
            self.hand = int((self.hand + last) % self.capacity)
            scanned += last
            if scanned > 3 * self.capacity:  # pragma: no cover - protect covers < capacity
                raise RuntimeError("row cache could not find free slots")
        victims = np.concatenate(chosen)
        self._memo = None  # these slots change hands
        self._write_back(victims)
        self.table.delete(self.row_of_slot[victims])
        self.row_of_slot[victims] = -1
        spare = victims[wanted:]
        self.free[self.n_free : self.n_free + spare.size] = spare
        self.n_free += spare.size
        return np.concatenate([fresh, victims[:wanted]])

    def _write_back(self, slots: np.ndarray) -> None:
        slots = slots[self.dirty[slots]]
        if slots.size:
            rows = self.row_of_slot[slots]
            order = np.argsort(rows, kind="stable")
            rows, slots = rows[order], slots[order]
            # In pieces of ~4 MiB: a commit writes back every dirty row, and one gathered copy
            # of them all would be a memory spike outside the budget.
            step = max(1, (4 << 20) // max(1, self.data[0].nbytes))
            for a in range(0, slots.size, step):
                self.store.write_index(self.key, rows[a : a + step], self.data[slots[a : a + step]])
                self.dirty[slots[a : a + step]] = False
            self.bytes_written += slots.size * self.data[0].nbytes

    def slots(self, rows: np.ndarray, load: bool = True) -> np.ndarray:
        """Slots holding ``rows`` (sorted, unique, at most ``capacity``), reading misses if ``load``."""
        memo = self._memo
        if memo is not None and memo[0].size == rows.size and np.array_equal(memo[0], rows):
            self.hits += rows.size
            self.ref[memo[1]] = True
            return memo[1].copy()
        slots = self.table.lookup(rows)
        miss = slots < 0
        n_miss = int(np.count_nonzero(miss))
        self.hits += rows.size - n_miss
        if n_miss:
            self.misses += n_miss
            new = self._victims(n_miss, slots[~miss])
            missing = rows[miss]
            if load:
                self.data[new] = self.store.read_index(self.key, missing)
                self.bytes_read += n_miss * self.data[0].nbytes
            self.table.insert(missing, new)
            self.row_of_slot[new] = missing
            slots[miss] = new
        self.ref[slots] = True
        self._memo = (rows.copy(), slots.copy())
        return slots

    # -- the pager's calls -------------------------------------------------------------------
    def gather(self, rows: np.ndarray) -> np.ndarray:
        """A copy of ``rows`` (sorted, unique)."""
        return np.take(self.data, self.slots(rows), axis=0)

    def scatter(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Overwrite ``rows`` in the cache (written to the store on eviction or flush)."""
        slots = self.slots(rows, load=False)
        self.data[slots] = values
        self.dirty[slots] = True

    def flush(self) -> None:
        """Write every dirty row back to the store."""
        self._write_back(np.flatnonzero(self.dirty[: self.used]))

    def clear(self) -> None:
        """Flush, then forget every row (after the store was written directly)."""
        self.flush()
        self._memo = None
        self.table.clear()
        self.row_of_slot.fill(-1)
        self.ref.fill(False)
        self.used = 0
        self.n_free = 0
        self.hand = 0
