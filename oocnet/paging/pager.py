"""The pager: parameter blocks paged between a store and RAM under a byte budget.

A layer *checks out* a block -- a row range ``[start, stop)`` of a parameter, or
a set of rows -- computes with the ndarray it gets, and *checks it back in*,
dirty if it changed it.  The pager

* keeps the bytes it holds (checked-out blocks, cached blocks, blocks being
  prefetched and spare buffers) at or below ``budget``;
* caches checked-in row-range blocks and drops the least recently used first,
  writing dirty ones back to the store before dropping them;
* prefetches, in a background thread, the blocks that come next in the *plan*
  the model sets (forward order, then the reverse for backward), as far as the
  budget allows, so reading overlaps computing;
* reuses the buffers of dropped blocks for blocks of the same shape: large
  per-step allocations would be returned to the OS by glibc and page-faulted
  back every step, which costs more than the arithmetic;
* counts bytes read and written, hits, misses, evictions and seconds spent
  waiting for IO (:class:`PagerStats`).

Row sets (an embedding's touched rows) go through a per-parameter
:class:`~oocnet.paging.rowcache.RowCache` when the model enables one: the hot
rows stay in RAM and only misses are read; without one, each gather reads the
rows and each scatter writes them straight back.

With a ``zero_copy`` store (the in-RAM default) the pager hands out live views
and moves nothing; the budget does not apply since the parameters are in RAM.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from ..errors import BudgetError, ConfigError, OocnetError
from ..phases import phase as _phase, track_pager as _track_pager  # profiler marks (no-ops unless profiling)
from ..store.base import Store, format_bytes
from .rowcache import RowCache

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value) -> int | None:
    """Parse a byte count: an int, or a string like ``"256MiB"``, ``"1.5GB"``, ``"4096"``.

    ``None``, ``"none"`` and ``"unlimited"`` mean no limit (returns None).
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"budget must be a positive number of bytes, got {value}.")
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "").replace("_", "")
        if text in ("none", "unlimited", "inf"):
            return None
        num = text.rstrip("kmgtib")
        unit = text[len(num):] or "b"
        try:
            n = float(num) if num.isascii() else -1.0  # float() also reads other scripts' digits
        except ValueError:
            n = -1.0
        if unit in _UNITS and math.isfinite(n) and n * _UNITS[unit] >= 1:  # "0.5" is no byte: refused
            return int(n * _UNITS[unit])
    raise ConfigError(
        f"budget must be a positive byte count such as 268435456, '256MiB' or '1.5GB', or none (no limit), "
        f"got {value!r}."
    )


@dataclass
class PagerStats:
    """Counters of a :class:`Pager` since it was made (or since :meth:`Pager.reset_stats`).

    Attributes
    ----------
    bytes_read, bytes_written : int
        Bytes moved from and to the store.
    hits, misses : int
        Row-range checkouts served from RAM, and those that had to read
        (prefetched blocks that arrive in time count as hits).
    row_hits, row_misses : int
        Rows of sparse gathers served from a row cache, and rows read from the store.
    prefetched : int
        Blocks read by the background thread.
    evictions : int
        Cached blocks dropped to make room.
    io_wait_seconds : float
        Time the computing thread spent blocked on reads and write-backs.
    peak_resident_bytes : int
        Most bytes the pager held at once.
    """

    bytes_read: int = 0
    bytes_written: int = 0
    hits: int = 0
    misses: int = 0
    row_hits: int = 0
    row_misses: int = 0
    prefetched: int = 0
    evictions: int = 0
    io_wait_seconds: float = 0.0
    peak_resident_bytes: int = 0

    def as_dict(self) -> dict:
        """The counters as a plain dict."""
        return asdict(self)


BlockId = tuple[str, int, int]


class _Entry:
    __slots__ = ("key", "start", "stop", "array", "nbytes", "dirty", "pins", "future")

    def __init__(self, key: str, start: int, stop: int, nbytes: int) -> None:
        self.key, self.start, self.stop, self.nbytes = key, start, stop, nbytes
        self.array: np.ndarray | None = None
        self.dirty = False
        self.pins = 0
        self.future: Future | None = None


_heap_primed = False


def _prime_heap() -> None:
    """Let glibc serve a step's temporaries (up to 16 MiB) from its heap, once per process.

    glibc's ``malloc`` maps every block over its threshold (128 KiB at start)
    afresh and unmaps it on ``free``, so each of a step's arrays of a few hundred
    KiB -- logits, gathered rows, gradients -- was page-faulted in anew every
    step (~10 us a page on this project's VM).  glibc raises the threshold by
    itself to the size of the first mapped block freed (at most 32 MiB); a model
    whose first act was to write 16 MiB chunks of initial values got that for
    free, one whose tables are created lazily did not, and its sampled-softmax
    step took 15 ms instead of 8.  Allocating and freeing one 16 MiB block sets
    the threshold as glibc would.  The price is glibc's own: up to twice that
    may stay in the heap after it is freed, counted in RSS.  Elsewhere this
    costs one allocation and does nothing.
    """
    global _heap_primed
    if not _heap_primed:
        _heap_primed = True
        np.empty(16 << 20, dtype=np.uint8)  # mapped by malloc, and freed at once


class Pager:
    """Pages parameter blocks between ``store`` and RAM within ``budget`` bytes.

    Parameters
    ----------
    store : Store
        Where the parameters live.
    budget : int, str or None
        Most bytes of parameter and optimizer-state blocks held in RAM at once
        (``"256MiB"``, ``2**28``); None for no limit.
    prefetch : bool
        Read upcoming blocks of the plan in a background thread.
    """

    def __init__(self, store: Store, budget=None, *, prefetch: bool = True) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"store must be an oocnet Store, got {type(store).__name__}.")
        self.store = store
        self.budget = parse_bytes(budget)
        self.stats = PagerStats()
        _prime_heap()
        store._pagers.add(self)  # closing the store writes this pager's dirty blocks back first
        self._lock = threading.RLock()
        self._cache: collections.OrderedDict[BlockId, _Entry] = collections.OrderedDict()
        self._spans: dict[str, set[tuple[int, int]]] = {}  # key -> (start, stop) of its cached blocks
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._row_caches: dict[str, RowCache] = {}
        self._free_bytes = 0
        self._resident = 0  # entries (loaded, loading or checked out) + free buffers
        self._plan: list[BlockId] = []
        self._plan_pos: dict[BlockId, int] = {}
        self._lookahead = 2
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="oocnet-prefetch") if (
            prefetch and not store.zero_copy) else None
        self._closed = False
        _track_pager(self)

    # -- accounting ----------------------------------------------------------------
    @property
    def resident_bytes(self) -> int:
        """Bytes the pager holds now (blocks and spare buffers)."""
        return self._resident

    def reset_stats(self) -> None:
        """Zero the counters."""
        self.stats = PagerStats(peak_resident_bytes=self._resident)

    def _grow(self, n: int) -> None:
        self._resident += n
        if self._resident > self.stats.peak_resident_bytes:
            self.stats.peak_resident_bytes = self._resident

    def _room(self, n: int, protect: frozenset = frozenset()) -> bool:
        """Free buffers and evict LRU unpinned blocks until ``n`` more bytes fit. Lock held."""
        if self.budget is None or self.store.zero_copy:
            return True
        while self._resident + n > self.budget and self._free_bytes:
            shape_key = next(iter(self._free))
            buf = self._free[shape_key].pop()
            if not self._free[shape_key]:
                del self._free[shape_key]
            self._free_bytes -= buf.nbytes
            self._resident -= buf.nbytes
        if self._resident + n <= self.budget:
            return True
        for bid in list(self._cache):
            if self._resident + n <= self.budget:
                break
            e = self._cache[bid]
            if e.pins or e.future is not None or bid in protect:
                continue
            self._drop(e, keep_buffer=False)
            self.stats.evictions += 1
        return self._resident + n <= self.budget

    def _drop(self, e: _Entry, keep_buffer: bool) -> None:
        """Write back (if dirty) and forget a cached block. Lock held."""
        if e.dirty and e.array is not None:
            self._write_back(e)
        del self._cache[(e.key, e.start, e.stop)]
        self._spans[e.key].discard((e.start, e.stop))
        if keep_buffer and e.array is not None:
            self._free.setdefault((e.array.shape, e.array.dtype.str), []).append(e.array)
            self._free_bytes += e.nbytes
        else:
            self._resident -= e.nbytes
        e.array = None

    def _write_back(self, e: _Entry) -> None:
        t0 = time.perf_counter()
        with _phase("write-back"):
            self.store.write_rows(e.key, e.start, e.array)
        self.stats.io_wait_seconds += time.perf_counter() - t0
        self.stats.bytes_written += e.nbytes
        e.dirty = False

    def _alloc(self, shape: tuple, dtype: np.dtype, what: str, protect: frozenset = frozenset(),
               required: bool = True) -> np.ndarray | None:
        """A buffer for a block, reserved against the budget. Lock held.

        A spare buffer of the same shape is reused (its bytes are already
        counted); otherwise room is made and a new one allocated.  Returns None
        when there is no room and ``required`` is False; raises BudgetError when
        it is True.
        """
        bufs = self._free.get((shape, dtype.str))
        if bufs:
            buf = bufs.pop()
            if not bufs:
                del self._free[(shape, dtype.str)]
            self._free_bytes -= buf.nbytes
            return buf
        n = int(np.prod(shape)) * dtype.itemsize
        if self.budget is not None and not self.store.zero_copy and self._resident + n > self.budget:
            # Something must go: prefer the least recently used block of the same
            # shape, whose buffer can be reused instead of freed and reallocated.
            for bid, e in self._cache.items():
                if (not e.pins and e.future is None and bid not in protect and e.array is not None
                        and e.array.shape == shape and e.array.dtype == dtype):
                    buf = e.array
                    self._drop(e, keep_buffer=False)
                    self._resident += buf.nbytes
                    self.stats.evictions += 1
                    return buf
        fits = self._room(n, protect)
        while not fits and required:
            # Blocks still loading in the background cannot be dropped; wait for
            # them (they become evictable) rather than fail a required allocation.
            loading = [e for e in self._cache.values() if e.future is not None and not e.pins]
            if not loading:
                break
            for e in loading:
                try:
                    self._await(e)
                except Exception:
                    pass
            fits = self._room(n, protect)
        if not fits:
            if not required:
                return None
            pinned = sum(e.nbytes for e in self._cache.values() if e.pins or e.future is not None)
            raise BudgetError(
                f"{what} needs {format_bytes(n)} but the budget of {format_bytes(self.budget)} has "
                f"{format_bytes(pinned)} checked out or in flight; raise the budget to at least "
                f"{format_bytes(pinned + n)}."
            )
        self._grow(n)
        return np.empty(shape, dtype=dtype)

    # -- plans and prefetch -------------------------------------------------------------
    def set_plan(self, blocks: list[BlockId]) -> None:
        """Declare the order in which row-range blocks will be checked out next.

        After each checkout the pager starts reading the following blocks of
        the plan in the background, as far as the budget allows.
        """
        with self._lock:
            self._plan = list(blocks)
            self._plan_pos = {b: i for i, b in enumerate(self._plan)}
        if self._plan:
            self._prefetch_after(-1)

    def _prefetch_after(self, pos: int) -> None:
        if self._executor is None:
            return
        upcoming = self._plan[pos + 1 : pos + 1 + self._lookahead]
        protect = frozenset(upcoming)
        with self._lock:
            for bid in upcoming:
                if bid in self._cache:
                    continue
                key, a, b = bid
                info = self.store.info(key)
                shape = (b - a, *info.row_shape)
                self._evict_overlaps(key, a, b)
                buf = self._alloc(shape, info.dtype, "prefetch", protect, required=False)
                if buf is None:
                    return
                e = _Entry(key, a, b, buf.nbytes)
                e.array = buf
                self._cache[bid] = e
                self._spans.setdefault(bid[0], set()).add(bid[1:])
                e.future = self._executor.submit(self._load, e)

    def _load(self, e: _Entry) -> None:
        self.store.read_rows(e.key, e.start, e.stop, out=e.array)
        with self._lock:
            self.stats.bytes_read += e.nbytes
            self.stats.prefetched += 1

    def _evict_overlaps(self, key: str, a: int, b: int) -> None:
        """Drop cached blocks of ``key`` that overlap ``[a, b)`` but differ from it. Lock held."""
        # By the key's own blocks: scanning the whole cache made each checkout cost O(blocks cached).
        for s, t in [st for st in self._spans.get(key, ()) if st[0] < b and a < st[1] and st != (a, b)]:
            e = self._cache.get((key, s, t))
            if e is None:
                continue
            if e.future is not None:
                self._await(e)
            if e.pins:
                raise OocnetError(f"rows [{s}, {t}) of {key!r} are checked out; check them in first.")
            if self._cache.get((key, s, t)) is e:
                self._drop(e, keep_buffer=True)

    def _await(self, e: _Entry) -> None:
        fut = e.future
        if fut is None:
            return
        t0 = time.perf_counter()
        self._lock.release()
        try:
            with _phase("load"):
                fut.exception()  # wait without raising here
        finally:
            self._lock.acquire()
        self.stats.io_wait_seconds += time.perf_counter() - t0
        e.future = None
        if fut.exception() is not None:
            self._drop(e, keep_buffer=True)
            raise fut.exception()

    # -- row ranges ---------------------------------------------------------------------
    def checkout(self, key: str, start: int, stop: int) -> np.ndarray:
        """Pin rows ``[start, stop)`` of ``key`` in RAM and return them (reads if needed).

        Every checkout must be matched by one :meth:`checkin`.
        """
        self._check_open()
        if self.store.zero_copy:
            self.stats.hits += 1
            return self.store.view_rows(key, start, stop)
        bid = (key, start, stop)
        with self._lock:
            cache = self._row_caches.get(key)
            if cache is not None and cache.used:
                # Rows of this key are read by range now (an exact pass over an output layer):
                # the cache's dirty rows go to the store first, and it forgets them, so range
                # blocks and cached rows never disagree.
                self._sync_cache_stats(cache, cache.clear)
            e = self._cache.get(bid)
            if e is not None and e.future is not None:
                try:
                    self._await(e)
                except Exception:
                    e = None
                else:
                    e = self._cache.get(bid)
            if e is not None:
                self.stats.hits += 1
                self._cache.move_to_end(bid)
            else:
                info = self.store.info(key)
                if not 0 <= start < stop <= info.n_rows:
                    raise OocnetError(f"rows [{start}, {stop}) are outside {key!r} with {info.n_rows} rows.")
                nbytes = (stop - start) * info.row_nbytes
                self._evict_overlaps(key, start, stop)
                e = _Entry(key, start, stop, nbytes)
                e.array = self._alloc((stop - start, *info.row_shape), info.dtype,
                                      f"rows [{start}, {stop}) of {key!r}")
                e.pins += 1  # pinned before the lock is released for IO
                self._cache[bid] = e
                self._spans.setdefault(bid[0], set()).add(bid[1:])
                t0 = time.perf_counter()
                try:
                    with _phase("load"):
                        self.store.read_rows(key, start, stop, out=e.array)
                except BaseException:
                    e.pins -= 1
                    self._drop(e, keep_buffer=True)
                    raise
                self.stats.io_wait_seconds += time.perf_counter() - t0
                self.stats.bytes_read += nbytes
                self.stats.misses += 1
                e.pins -= 1
            e.pins += 1
            pos = self._plan_pos.get(bid)
        if pos is not None:
            self._prefetch_after(pos)
        return e.array

    def checkin(self, key: str, start: int, stop: int, dirty: bool = False) -> None:
        """Unpin a block checked out with :meth:`checkout`; ``dirty`` if it was changed."""
        if self.store.zero_copy:
            return
        with self._lock:
            e = self._cache.get((key, start, stop))
            if e is None or e.pins == 0:
                raise OocnetError(f"rows [{start}, {stop}) of {key!r} are not checked out.")
            e.pins -= 1
            e.dirty = e.dirty or bool(dirty)

    def reset_pins(self) -> int:
        """Unpin every block (after a step that raised: an interrupt between a checkout and its
        ``try`` can leave a pin no code will release).  Returns the number of blocks unpinned."""
        with self._lock:
            stuck = [e for e in self._cache.values() if e.pins]
            for e in stuck:
                e.pins = 0
            return len(stuck)

    def discard(self, key: str, start: int, stop: int) -> None:
        """Unpin a checked-out block and forget changes made to it (after an error)."""
        if self.store.zero_copy:
            return
        with self._lock:
            e = self._cache.get((key, start, stop))
            if e is None or e.pins == 0:
                return
            e.pins -= 1
            if e.pins == 0:
                e.dirty = False
                self._drop(e, keep_buffer=True)

    @contextlib.contextmanager
    def rows(self, key: str, start: int, stop: int, write: bool = False) -> Iterator[np.ndarray]:
        """``with pager.rows(key, a, b, write=True) as block:`` -- checkout, then checkin.

        On an exception inside the block, changes are discarded, not written back.
        """
        arr = self.checkout(key, start, stop)
        try:
            yield arr
        except BaseException:
            self.discard(key, start, stop) if write else self.checkin(key, start, stop)
            raise
        self.checkin(key, start, stop, dirty=write)

    @contextlib.contextmanager
    def temp(self, shape: tuple, dtype) -> Iterator[np.ndarray]:
        """A scratch buffer counted against the budget (e.g. a tile's gradient), reused across steps."""
        dtype = np.dtype(dtype)
        shape = tuple(shape)
        with self._lock:
            buf = self._alloc(shape, dtype, f"a scratch buffer of shape {shape}")
        try:
            yield buf
        finally:
            with self._lock:
                self._free.setdefault((buf.shape, buf.dtype.str), []).append(buf)
                self._free_bytes += buf.nbytes

    # -- row sets ------------------------------------------------------------------------
    def enable_row_cache(self, key: str, capacity: int) -> None:
        """Keep up to ``capacity`` recently used rows of ``key`` in RAM (see :mod:`.rowcache`).

        The cache's bytes count against the budget from now on.  A cache already
        there is flushed and replaced.  No-op for a zero-copy (in-RAM) store.
        """
        if self.store.zero_copy:
            return
        with self._lock:
            self.disable_row_cache(key)
            cache = RowCache(self.store, key, capacity)
            if not self._room(cache.nbytes):
                raise BudgetError(
                    f"a row cache of {cache.capacity} rows of {key!r} needs {format_bytes(cache.nbytes)}, more "
                    f"than the budget of {format_bytes(self.budget)} leaves free."
                )
            self._grow(cache.nbytes)
            self._row_caches[key] = cache

    def disable_row_cache(self, key: str) -> None:
        """Flush and drop the row cache of ``key`` (if any), returning its bytes to the budget."""
        with self._lock:
            cache = self._row_caches.pop(key, None)
            if cache is not None:
                self._sync_cache_stats(cache, lambda: cache.flush())
                self._resident -= cache.nbytes

    def _sync_cache_stats(self, cache: RowCache, action):
        """Run ``action`` on ``cache`` and add the IO it did to the counters. Lock held."""
        r, w, h, m = cache.bytes_read, cache.bytes_written, cache.hits, cache.misses
        t0 = time.perf_counter()
        out = action()
        if cache.bytes_read != r or cache.bytes_written != w:
            self.stats.io_wait_seconds += time.perf_counter() - t0
        self.stats.bytes_read += cache.bytes_read - r
        self.stats.bytes_written += cache.bytes_written - w
        self.stats.row_hits += cache.hits - h
        self.stats.row_misses += cache.misses - m
        return out

    def gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (sorted, unique) of ``key`` in a new array counted against the budget.

        Served from the key's row cache when it has one (reading only the misses),
        else read from the store.  Call :meth:`scatter` (or :meth:`release`) with the
        same rows afterwards.
        """
        self._check_open()
        info = self.store.info(key)
        nbytes = len(rows) * info.row_nbytes
        with self._lock:
            if not self.store.zero_copy:
                if not self._room(nbytes):
                    caches = sum(c.nbytes for c in self._row_caches.values())
                    raise BudgetError(
                        f"{len(rows)} rows of {key!r} need {format_bytes(nbytes)}, more than the "
                        f"{format_bytes(max(0, self.budget - self._resident))} of the budget of "
                        f"{format_bytes(self.budget)} left free ({format_bytes(caches)} is held by row caches, "
                        f"{format_bytes(self._resident - caches)} by this step's other rows and blocks); raise the "
                        f"budget, or use smaller batches (or fewer sampled classes)."
                    )
                self._grow(nbytes)
            try:
                cache = self._row_caches.get(key)
                if cache is not None and not cache.fits(len(rows)):
                    cache.clear()  # a batch larger than the cache goes straight to the store
                    cache = None
                # Cached row ranges may hold newer values than the store: write them back first
                # (and with a row cache, drop them: the cache owns these rows from now on).
                for e in list(self._cache.values()):
                    if e.key == key and e.array is not None and e.future is None:
                        if e.dirty:
                            self._write_back(e)
                        if cache is not None and not e.pins:
                            self._drop(e, keep_buffer=True)
                if cache is not None:
                    with _phase("load"):
                        return self._sync_cache_stats(cache, lambda: cache.gather(rows))
            except BaseException:
                self._resident -= 0 if self.store.zero_copy else nbytes
                raise
        t0 = time.perf_counter()
        try:
            with _phase("load"):
                out = self.store.read_index(key, rows)
        except BaseException:
            self.release(key, rows)
            raise
        with self._lock:
            if not self.store.zero_copy:
                self.stats.io_wait_seconds += time.perf_counter() - t0
                self.stats.bytes_read += nbytes
                self.stats.row_misses += len(rows)
        return out

    def scatter(self, key: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Write gathered rows back (to the row cache, or the store) and release their budget."""
        try:
            with self._lock:
                cache = self._row_caches.get(key)
                if cache is not None and cache.fits(len(rows)):
                    cache.scatter(rows, values)
                    return
            t0 = time.perf_counter()
            with _phase("write-back"):
                self.store.write_index(key, rows, values)
            with self._lock:
                if not self.store.zero_copy:
                    self.stats.io_wait_seconds += time.perf_counter() - t0
                    self.stats.bytes_written += values.nbytes
                # Cached row ranges of this key are now stale.
                for bid, e in list(self._cache.items()):
                    if e.key == key and e.pins == 0 and e.future is None:
                        e.dirty = False
                        self._drop(e, keep_buffer=True)
        finally:
            self.release(key, rows)

    def release(self, key: str, rows: np.ndarray) -> None:
        """Return the budget of gathered rows without writing them."""
        if self.store.zero_copy:
            return
        info = self.store.info(key)
        with self._lock:
            self._resident -= len(rows) * info.row_nbytes

    # -- whole-store operations -----------------------------------------------------------
    def flush(self) -> None:
        """Write every dirty cached block back and flush the store."""
        self._check_open()
        with self._lock:
            for e in list(self._cache.values()):
                if e.future is not None:
                    self._await(e)
                if e.dirty and e.array is not None:
                    self._write_back(e)
            for cache in self._row_caches.values():
                with _phase("write-back"):
                    self._sync_cache_stats(cache, cache.flush)
        self.store.flush()

    def invalidate(self, key: str | None = None) -> None:
        """Write back and drop cached blocks (of ``key``, or all), e.g. after writing the store directly."""
        with self._lock:
            for k, cache in self._row_caches.items():
                if key is None or k == key:
                    self._sync_cache_stats(cache, cache.clear)
            for e in list(self._cache.values()):
                if key is not None and e.key != key:
                    continue
                if e.future is not None:
                    self._await(e)
                if e.pins:
                    raise OocnetError(f"rows [{e.start}, {e.stop}) of {e.key!r} are checked out.")
                self._drop(e, keep_buffer=False)
            if key is None:
                self._resident -= self._free_bytes
                self._free.clear()
                self._free_bytes = 0

    def close(self, flush: bool = True) -> None:
        """Write back dirty blocks (unless ``flush`` is False), stop the prefetch thread, release buffers.

        The store stays open.
        """
        if self._closed:
            return
        try:
            if not self.store.closed and flush:
                self.flush()
                self.invalidate()
        finally:
            self._closed = True
            self.store._pagers.discard(self)
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def _check_open(self) -> None:
        if self._closed:
            raise OocnetError("the pager is closed.")

    @property
    def dirty(self) -> bool:
        """Whether it holds changes not yet written to the store (blocks or row-cache rows)."""
        with self._lock:
            return (any(e.dirty for e in self._cache.values())
                    or any(bool(c.dirty[: c.used].any()) for c in self._row_caches.values()))

    def __repr__(self) -> str:
        return (f"<Pager budget={format_bytes(self.budget)} resident={format_bytes(self._resident)} "
                f"blocks={len(self._cache)}>")


__all__ = ["Pager", "PagerStats", "parse_bytes", "format_bytes"]
