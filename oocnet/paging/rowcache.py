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
* when the cache is full, S3-FIFO (Yang et al., SOSP 2023) picks victims.  A
  row read in enters a small FIFO queue (a tenth of the cache); when it reaches
  the queue's head it is evicted, unless it was used again meanwhile, in which
  case it moves to the main queue.  The main queue is a CLOCK whose hand spares
  a row once for each use since it last passed (up to 3).  A "ghost" remembers
  the ids lately evicted from the small queue, so that a row coming back soon
  after goes straight to the main queue.  Most rows of a Zipf tail are used
  once and leave through the small queue without displacing the frequent rows.
  Victims are taken in batches of 1/32 of the capacity (the spare ones wait on
  a free list for the next misses), so their write-back -- one ``write_index``
  call, which on a durable store means one journal ``fsync`` -- happens every
  few steps, not every step;
* :meth:`flush` writes every dirty row back (commit, close, state_dict).

Everything is sized by the capacity, never by the vocabulary, and the arrays
are allocated once, so a step allocates nothing table-sized.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..store.base import Store
from .idtable import _GOLDEN, IdTable


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14 (not named by Python 3.11's mmap module)


def _resident_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array in transparent huge pages where the kernel has them, made resident now.

    The cache fills a few hundred fresh slots a step for its first thousands of
    steps; each new page was a page fault in the step (~10 us each on the
    project's VM: 0.4 ms a step at V = 10^6), so every page is mapped up front,
    in one system call where the kernel has ``MADV_POPULATE_WRITE``.  And a
    step gathers and scatters a few thousand rows scattered over the cache:
    in 2 MiB pages they miss the TLB far less (gather / scatter of 2,000 rows
    of a 190 MB cache: 0.32 / 0.42 ms in 4 KiB pages, 0.28 / 0.30 in 2 MiB).
    numpy asks for huge pages for its own large arrays; a plain ``mmap`` must
    ask itself, before the pages are touched.  The cache's bytes are its share of the budget either way.
    Elsewhere (or below 1 MiB): ``np.empty``.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < (1 << 20) or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype=dtype)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return np.empty(shape, dtype=dtype)
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    if hugepage is not None:
        try:
            buf.madvise(hugepage)
        except (OSError, ValueError):
            pass  # huge pages are an optimisation
    try:
        buf.madvise(_MADV_POPULATE_WRITE)
    except (OSError, ValueError):  # before Linux 5.14 (or elsewhere): map each page by touching it
        np.frombuffer(buf, dtype=np.uint8)[:: mmap.PAGESIZE] = 0
    return np.frombuffer(buf, dtype=dtype).reshape(shape)  # the array keeps the map alive


class _Ghost:
    """Ids evicted from a cache's small queue lately: a FIFO ring of ``size`` ids, and a counting
    filter of one byte per bucket (4-8 buckets per id) that answers "was this id in the ring?".

    The answer errs only towards yes, for an id that shares a bucket with one in the ring (about 10-20%
    of ids when the ring is full): such a row enters the main queue at once, as every row does under
    plain CLOCK.  A counter that wraps past 255 (256 ids in one bucket) errs either way.  Neither
    affects what the cache returns, only which row it evicts.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self.ids = np.empty(self.size, dtype=np.int64)
        self.head = self.n = 0
        buckets = self._buckets_for(self.size)
        self.counts = np.zeros(buckets, dtype=np.uint8)
        self._shift = np.uint64(64 - (buckets.bit_length() - 1))

    @staticmethod
    def _buckets_for(size: int) -> int:
        buckets = 16
        while buckets < 4 * size:
            buckets *= 2
        return buckets

    @classmethod
    def nbytes_for(cls, size: int) -> int:
        """:attr:`nbytes` of a ghost of ``size`` ids, without building it."""
        size = max(1, int(size))
        return size * 8 + cls._buckets_for(size)

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.counts.nbytes

    def _bucket(self, ids: np.ndarray) -> np.ndarray:
        return ((ids.astype(np.uint64) * _GOLDEN) >> self._shift).astype(np.intp)

    def add(self, ids: np.ndarray) -> None:
        """Remember ``ids``, forgetting the oldest beyond ``size``."""
        ids = ids[-self.size :]
        over = self.n + ids.size - self.size
        if over > 0:
            old = self.ids[(self.head + np.arange(over)) % self.size]
            np.subtract.at(self.counts, self._bucket(old), 1)
            self.head = (self.head + over) % self.size
            self.n -= over
        self.ids[(self.head + self.n + np.arange(ids.size)) % self.size] = ids
        np.add.at(self.counts, self._bucket(ids), 1)
        self.n += ids.size

    def seen(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of ``ids`` was (probably) added among the last ``size``."""
        return self.counts[self._bucket(ids)] > 0

    def clear(self) -> None:
        self.counts.fill(0)
        self.head = self.n = 0


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

    FREQ_MAX = 3  # uses remembered per row (two bits' worth, as in S3-FIFO)

    def __init__(self, store: Store, key: str, capacity: int) -> None:
        info = store.info(key)
        self.store, self.key = store, key
        self.capacity = int(max(1, min(capacity, info.n_rows)))
        self.data = _resident_empty((self.capacity, *info.row_shape), info.dtype)
        self.row_of_slot = np.full(self.capacity, -1, dtype=np.int64)
        self.dirty = np.zeros(self.capacity, dtype=bool)
        self.table = IdTable(self.capacity)
        # S3-FIFO: rows enter a small FIFO queue (a ring of slots); those used again before they reach
        # its head move to the main queue, a CLOCK whose hand spares a row once per recorded use.
        self.freq = np.zeros(self.capacity, dtype=np.uint8)  # uses since admission / the hand's last pass
        self.in_main = np.zeros(self.capacity, dtype=bool)
        self.small = np.empty(self.capacity, dtype=np.int64)  # the small queue: small[head : head + n] (mod)
        self.small_head = self.n_small = self.n_main = 0
        self.small_target = self._small_target(self.capacity)
        # Rows evicted from the small queue lately: one of them read in again goes to the main queue.
        self.ghost = _Ghost(self.capacity - self.small_target)
        self.hand = 0  # the main queue's
        self.used = 0  # slots [0, used) have held a row
        self.free = np.empty(self.capacity, dtype=np.int64)  # evicted, empty slots: free[:n_free]
        self.n_free = 0
        self.batch = max(1, self.capacity // 32)
        # (rows, slots) of the last lookup: a step's scatter passes the rows its gather did,
        # and slots change hands only in a later lookup's evictions or in clear().
        self._memo: tuple | None = None
        self.bytes_read = self.bytes_written = self.hits = self.misses = 0

    @staticmethod
    def _small_target(capacity: int) -> int:
        """Rows the small queue holds before it gives victims: a tenth of the cache."""
        return max(1, capacity // 10)

    @staticmethod
    def nbytes_for(capacity: int, row_nbytes: int) -> int:
        """:attr:`nbytes` of a cache of ``capacity`` rows of ``row_nbytes`` bytes, without building it."""
        # per slot: the row, row_of_slot (int64), dirty (bool), freq (uint8), in_main (bool), free and
        # small (int64); then the id table and the ghost
        capacity = int(capacity)
        return (capacity * (int(row_nbytes) + 8 + 1 + 1 + 1 + 8 + 8) + IdTable.nbytes_for(capacity)
                + _Ghost.nbytes_for(capacity - RowCache._small_target(capacity)))

    @property
    def nbytes(self) -> int:
        """Bytes the cache may hold at full occupancy (its budget)."""
        return (self.data.nbytes + self.row_of_slot.nbytes + self.dirty.nbytes + self.freq.nbytes
                + self.in_main.nbytes + self.free.nbytes + self.small.nbytes + self.table.nbytes
                + self.ghost.nbytes)

    def fits(self, n_rows: int) -> bool:
        """Whether a batch touching ``n_rows`` distinct rows can be served from the cache."""
        return n_rows <= self.capacity

    # -- slots ---------------------------------------------------------------------------
    def _victims(self, k: int, protect: np.ndarray) -> np.ndarray:
        """``k`` empty slots: never-used ones first, then freed ones, then evicted ones.

        Eviction takes at least ``batch`` rows at a time (see the class docstring
        for the policy); dirty victims are written back, and the slots not needed
        now go on the free list.
        """
        used, n_free = self.used, self.n_free  # restored if the write-back below fails
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
        # The main queue's hand finds every unguarded row at frequency 0 within FREQ_MAX + 1 laps.
        # If the small queue is at its share and every main row is guarded, the small queue gives.
        window = max(need * 2, 1024)
        scanned, limit = 0, (self.FREQ_MAX + 2) * self.capacity
        while need > 0:
            if self.n_small and (self.n_small > self.small_target or self.n_main == 0 or scanned > limit):
                got = self._pop_small(need, guard)
            elif self.n_main and scanned <= 2 * limit:
                got, passed = self._sweep_main(need, guard, window)
                scanned += passed
            else:  # pragma: no cover - protect + k <= capacity leaves enough unguarded rows
                raise RuntimeError("row cache could not find free slots")
            if got.size:
                chosen.append(got)
                guard[got] = True
                need -= got.size
        victims = np.concatenate(chosen)
        self._memo = None  # these slots change hands
        try:
            self._write_back(victims)
        except BaseException:
            # Still cached (dirty rows whose write failed stay dirty): back to the main queue, or
            # their slots would be in no queue and not free -- lost to every later eviction.  The
            # unused and free slots handed out above are given back (the free list still holds them).
            self.in_main[victims] = True
            self.n_main += victims.size
            self.used, self.n_free = used, n_free
            raise
        self.table.delete(self.row_of_slot[victims])
        self.row_of_slot[victims] = -1
        spare = victims[wanted:]
        self.free[self.n_free : self.n_free + spare.size] = spare
        self.n_free += spare.size
        return np.concatenate([fresh, victims[:wanted]])

    def _pop_small(self, need: int, guard: np.ndarray) -> np.ndarray:
        """Take up to ``need`` slots off the small queue's head: rows used again since admission move
        to the main queue, the others are victims (returned)."""
        n = min(need, self.n_small)
        popped = self.small[(self.small_head + np.arange(n)) % self.capacity]
        self.small_head = (self.small_head + n) % self.capacity
        self.n_small -= n
        keep = (self.freq[popped] > 0) | guard[popped]
        promoted = popped[keep]
        self.in_main[promoted] = True
        self.freq[promoted] = 0
        self.n_main += promoted.size
        victims = popped[~keep]
        self.ghost.add(self.row_of_slot[victims])
        return victims

    def _sweep_main(self, need: int, guard: np.ndarray, window: int) -> tuple[np.ndarray, int]:
        """Move the main queue's hand over at most ``window`` slots: rows at frequency 0 are victims
        (up to ``need``, returned), the others passed lose one.  Returns (victims, slots passed)."""
        idx = (self.hand + np.arange(min(window, self.capacity))) % self.capacity
        main = self.in_main[idx]
        f = self.freq[idx]
        take = np.flatnonzero(main & (f == 0) & ~guard[idx])[:need]
        last = take[-1] + 1 if take.size == need else idx.size
        passed = idx[:last]
        self.freq[passed] = f[:last] - (main[:last] & (f[:last] > 0))
        self.hand = int((self.hand + last) % self.capacity)
        picked = idx[take]
        self.in_main[picked] = False
        self.n_main -= picked.size
        return picked, int(last)

    def _admit(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Queue newly filled ``slots`` (holding ``rows``), unused so far: rows the ghost remembers
        at the main queue, the others at the small queue's tail."""
        self.freq[slots] = 0
        back = self.ghost.seen(rows)
        main, small = slots[back], slots[~back]
        self.in_main[main] = True
        self.n_main += main.size
        self.in_main[small] = False
        self.small[(self.small_head + self.n_small + np.arange(small.size)) % self.capacity] = small
        self.n_small += small.size

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
            self.hits += rows.size  # the same use as the lookup that made the memo: not counted again
            return memo[1].copy()
        slots = self.table.lookup(rows)
        miss = slots < 0
        n_miss = int(np.count_nonzero(miss))
        self.hits += rows.size - n_miss
        hit = slots[~miss] if n_miss else slots
        self.freq[hit] = np.minimum(self.freq[hit], self.FREQ_MAX - 1) + 1
        if n_miss:
            self.misses += n_miss
            new = self._victims(n_miss, hit)
            missing = rows[miss]
            if load:
                self.data[new] = self.store.read_index(self.key, missing)
                self.bytes_read += n_miss * self.data[0].nbytes
            self.table.insert(missing, new)
            self.row_of_slot[new] = missing
            self._admit(new, missing)
            slots[miss] = new
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
        self.freq.fill(0)
        self.in_main.fill(False)
        self.small_head = self.n_small = self.n_main = 0
        self.ghost.clear()
        self.used = 0
        self.n_free = 0
        self.hand = 0
