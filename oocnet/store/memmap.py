"""The memmap store: a folder of ``.npy`` row shards and a JSON manifest.

Each parameter is cut along its rows into shards of about ``shard_bytes``; each
shard is a standard ``.npy`` file, so a user can open any shard with
``np.load(path, mmap_mode="r")`` without oocnet.  The store itself never keeps
a memory map: it moves rows with ``os.preadv`` / ``os.pwrite`` into and out of
buffers the caller owns (see "Why pread, not mmap" below).

On-disk format, version 2
=========================

Version 2 added lazily created parameters (``lazy`` below); version 1
stores are read, and written as version 2 from their first change.

A store is a folder holding ``manifest.json`` and the shard files::

    params/
        manifest.json
        dense_0%2FW.00000.npy
        dense_0%2FW.00001.npy
        dense_0%2Fb.00000.npy

Beside them: ``lock`` (the writer lock, holding the writer's pid) and, between
a write and the next commit, ``journal`` (the rollback journal,
:mod:`oocnet.store.journal`).  Nothing else is read; other files (for
instance ``manifest.json.tmp`` left by a crash, or shards of a deleted
parameter) are ignored.

``manifest.json``
-----------------
A JSON object (UTF-8; :func:`json.dumps` escapes non-ASCII key characters as
``\\uXXXX``, so the file is ASCII in practice)::

    {
      "format": "oocnet-memmap",        # str, exactly this
      "version": 2,                      # int; a reader refuses a larger version
      "commit": {                        # the last commit (oocnet.store.durable)
        "generation": 3,                 # int >= 0, +1 per commit; 0 = created, nothing committed
        "step": 1200,                    # int: the training step committed
        "metadata": {...},               # object: the user's metadata
        "time": "2026-11-26T23:00:00+00:00",   # str (UTC) or null
        "checksums": {"dense_0/W": [12345678901234567890, ...]},   # per key, one u64 per shard
        "stamps": {"dense_0%2FW.00000.npy": [size, mtime_ns]},       # files as committed
        "lazy": {"emb/W": {"init": {...}, "file": "#written.<hex>.3", "crc": 123}}
                                         # lazily created parameters: see "Written-row bitmaps"
      },                                 # absent in manifests written before commits: adopted
      "params": {                        # object: parameter key -> entry
        "dense_0/W": {
          "shape": [128, 64],            # list of >= 1 positive ints; axis 0 = rows
          "dtype": "float32",            # float16 float32 float64 int32 int64 uint8
          "shards": [                    # non-empty list, in row order
            {"file": "dense_0%2FW.00000.npy",   # file name in the folder (no directory
                                                # part), ends in ".npy", unique in the store
             "start": 0, "stop": 128}           # ints: the shard holds rows [start, stop)
          ],
          "lazy": true                   # only on a parameter created lazily: then the
                                         # commit's "lazy" section must hold its bitmap
        }
      },
      "crc": 123456789                   # crc32 of the canonical JSON of everything else
                                         # (oocnet.store.durable.sealed); absent in older
                                         # manifests, which are read as they are
    }

``params`` lists every parameter of the last commit, and may list parameters
created since (a parameter's entry is written with the next commit, or with any
earlier manifest write; a new parameter the manifest does not list yet is an
orphan after a crash, dropped like any parameter the last commit does not
cover).

Keys are valid parameter keys (:func:`oocnet.store.base.validate_key`).  The
shards of a parameter tile ``[0, n_rows)``: the first ``start`` is 0, every
``start`` equals the previous ``stop``, ``start < stop``, and the last ``stop``
is ``n_rows``.  Fields not listed here are ignored.  A writer of this version
cuts shards of ``max(1, shard_bytes // row_nbytes)`` rows (the last may be
shorter) and names them ``quote(key, safe="") + f".{i:05d}.npy"`` (a long
key's name is shortened and suffixed with a hash; a name that would collide,
ignoring case, with another parameter's gets a ``~n`` suffix); readers rely
only on the manifest, not on these rules.

Shard files
-----------
A shard holding ``rows`` rows of a parameter of shape ``(n_rows, d1, ...)`` is
a numpy ``.npy`` file, format version 1.0:

=========================  ============  ===============================================
offset                     size (bytes)  content
=========================  ============  ===============================================
0                          6             magic ``b"\\x93NUMPY"``
6                          1             major version, ``1``
7                          1             minor version, ``0``
8                          2             ``HEADER_LEN``, little-endian uint16
10                         HEADER_LEN    ASCII Python dict literal
                                         ``{'descr': '<f4', 'fortran_order': False,
                                         'shape': (rows, d1, ...), }``, padded with
                                         spaces and ended by ``'\\n'`` so that
                                         ``10 + HEADER_LEN`` is a multiple of 64
10 + HEADER_LEN            rows * row    the rows, C order, little-endian (``'|u1'``
                           _nbytes       for uint8); row ``r`` of the parameter, with
                                         ``start <= r < stop``, is at byte
                                         ``10 + HEADER_LEN + (r - start) * row_nbytes``
=========================  ============  ===============================================

The file is exactly ``10 + HEADER_LEN + rows * row_nbytes`` bytes long.  Shards
created without initial values are not written: their data region is
allocated (``fallocate``; a hole where the file system cannot) and reads
as zeros.  A lazily created parameter's shards are such files too: a row never
written holds zeros and reads (through the store) as its initial value.  On
open every shard's header is checked against the manifest (version 1.0,
``descr``, ``fortran_order`` False, ``shape``) and so is its length.

Written-row bitmaps
-------------------
For each lazily created parameter, ``commit.lazy[key]`` is
``{"init": spec, "file": name, "crc": crc32}``: ``spec`` rebuilds the
initializer (:func:`oocnet.store.rowinit.from_spec`), and the file
``#written.<16 hex digits of the key's blake2b>.<generation>`` in the folder
holds ``ceil(n_rows / 8)`` bytes, bit ``r % 8`` (least significant first) of
byte ``r // 8`` set when row ``r`` was written as of that commit.  ``crc`` is
the crc32 of the spec's JSON (sorted keys) continued over the bitmap's bytes,
so a changed spec fails too.  A parameter marked ``"lazy": true`` whose commit
has no entry is refused (its rows could not be told from its initial values).

Writing protocol
----------------
* The manifest is only ever replaced atomically: written to
  ``manifest.json.tmp``, fsynced, ``os.replace``-d over ``manifest.json``, then
  the folder is fsynced.  A crash leaves the old or the new manifest, never a
  torn one.
* Creating a parameter writes its shard files; the manifest lists it from the
  next manifest write (at the latest the next commit, which fsyncs the files
  first).  Deleting a parameter of the last commit takes effect at the next
  commit: that manifest no longer lists it, and its files are unlinked after.
  A crash in between leaves only unreferenced files, which are ignored.
* Row writes go in place with ``pwrite``, each journaled first; a commit
  fsyncs the shards written, updates ``commit.checksums`` from the changed rows
  and replaces the manifest -- the commit point (see :mod:`oocnet.store.durable`
  for the whole protocol and why its order is safe).  A parameter in
  ``params`` but not in ``commit.checksums`` was created after the last commit
  and is dropped when the store is opened for writing (hidden from readers).
* A shard's checksum is the sum mod 2**64 of per-row hashes
  (:mod:`oocnet.store.checksum`) over its data rows.
* One writer at a time: a writable store holds an exclusive ``flock`` on
  ``lock``; read-only opens take no lock.

Why pread, not mmap
-------------------
Pages of a memory-mapped file count in the process RSS while they are mapped
and resident, so a store that kept maps open would let RSS grow past the
pager's byte budget.  Reading with ``preadv`` into the pager's own buffers
keeps every resident byte accounted for; the kernel page cache is not RSS.  It
is also faster for cold rows: many reads in flight let the disk work in
parallel (about 90k rows/s with 32 concurrent preads against about 20k rows/s
for page faults, which come one at a time per thread).  And for warm ones:
gathering 665 scattered 512-byte rows of a cached 5 GB table through a shared
map (numpy fancy indexing, ``MADV_RANDOM``) cost 5-12 us a row in page faults,
each fault mapping 64 KiB around the row into RSS; ``preadv`` costs about
2.4 us a row, nearly all of it in the kernel.  Batching the same reads through
io_uring (one system call for the whole batch) measured 2.2-3 us a row and
writes 3.4-6 us: the per-row cost is the page cache's, not the system call's.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import io
import json
import math
import mmap
import os
import stat
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..errors import ConfigError, StoreError, StoreFormatError, StoreIOError
from .durable import DurableStore, acquire_lock, check_seal, sealed, write_atomic
from .base import (
    ParamInfo,
    RowInitializer,
    Store,
    check_disk_room,
    check_path,
    check_positive_int,
    chunk_rows,
    validate_dtype,
    validate_key,
)

try:  # advisory lock for "one writer at a time"; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

FORMAT_NAME = "oocnet-memmap"
FORMAT_VERSION = 2  # 2: lazily created parameters ("lazy" in params and in the commit record)
MANIFEST = "manifest.json"
_MANIFEST_TMP = MANIFEST + ".tmp"
LOCK = "lock"
JOURNAL = "journal"

#: Default bytes per shard file.
DEFAULT_SHARD_BYTES = 64 * 2**20

# Up to this many preads in flight for a scattered read.  Cold rows come off an
# SSD several times faster with many requests queued (DESIGN.md: ~90k rows/s
# with 32 in flight vs ~20k rows/s one at a time).
_MAX_WORKERS = 32
# Below this many separate reads, go serially: a warm pread costs ~2 us, handing
# work to a thread pool ~50 us.  Reads known to miss the page cache (~100 us or
# more each) go to the pool from this many on.
_PARALLEL_MIN_READS = 64
_PARALLEL_MIN_COLD = 4
# preadv2 flag: fail with EAGAIN instead of waiting for the disk (Linux >= 4.14).
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)
# Each pool task reads at least this many runs, to amortise the hand-off.
_READS_PER_TASK = 16
# Big contiguous reads are cut into pieces of this size so several are in flight.
_PIECE_BYTES = 8 * 2**20
# Index reads: rows less than this apart are fetched by one pread of the span
# between them and gathered.  A pread costs about as much as copying 16 KiB from
# the page cache, and a cold read fetches whole 4 KiB pages (plus readahead) anyway.
_GAP_BYTES = 16 * 2**10
# ... spans are cut at this size, which bounds each reader's scratch buffer.
_SPAN_BYTES = 256 * 2**10
# Checksums are computed through a buffer of this size: bounded memory however
# large the shard.
_CRC_CHUNK_BYTES = 4 * 2**20
# Longest file-name stem before it is shortened (NAME_MAX is 255 bytes).
_MAX_STEM = 200
# Initial values are written in pieces that end on page boundaries (see _create).
_PAGE = mmap.PAGESIZE


def _advise_random(fd: int) -> None:
    """Tell the kernel this file is read at random: no readahead, and page-sized cache pages.

    Rows are read by exact runs, so readahead would only read what nobody asked
    for.  It matters more for writes: without this flag the kernel fills its
    cache with large folios (up to megabytes), and writing one 512-byte row into
    a clean large folio dirties all of it -- measured on ext4 (Linux 6.18) at
    24-48 us a row under dirty-page throttling, against 2.5 us when the cached
    page is a single 4 KiB page.
    """
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:  # pragma: no cover - advisory only
            pass


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE, _FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
_libc_fallocate = None


def zero_region(fd: int, offset: int, nbytes: int) -> bool:
    """Make ``nbytes`` at ``offset`` read as zeros without writing them; False where the OS cannot.

    ``fallocate(FALLOC_FL_ZERO_RANGE)`` turns the range into allocated, unwritten
    extents (ext4, XFS); else a hole is punched.  Unlike zeros written out, a
    later 512-byte row write there needs no read of its 4 KiB block from the disk
    (63 us a row when it did, here), and unlike a hole, no block allocation on the
    write path (5-9 us a row into holes on ext4, 3.2 us into allocated blocks).
    """
    global _libc_fallocate
    if nbytes <= 0:
        return True
    if _libc_fallocate is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            _libc_fallocate = fn
        except (OSError, AttributeError):  # not Linux/glibc
            _libc_fallocate = False
    if not _libc_fallocate:
        return False
    for mode in (_FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE):
        if _libc_fallocate(fd, mode, offset, nbytes) == 0:
            return True
    return False


@dataclass(eq=False)  # identity hashing: shards go into the "written" set
class _Shard:
    file: str
    start: int
    stop: int
    crc32: int | None
    offset: int  # byte offset of row `start` in the file (the .npy header length)


@dataclass(eq=False)
class _Param:
    info: ParamInfo
    shards: list[_Shard]
    stops: np.ndarray = field(init=False)  # stop row of each shard, for searchsorted

    def __post_init__(self) -> None:
        self.stops = np.array([s.stop for s in self.shards], dtype=np.int64)


def _file_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype written in shard headers."""
    return dtype.newbyteorder("<")


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """Bytes of a .npy version 1.0 header (magic included) for a C-order array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(_file_dtype(dtype)), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _as_bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _io_error(exc: OSError, action: str, path: os.PathLike | str) -> StoreIOError:
    err = StoreIOError(f"{action} {os.fspath(path)} failed: {exc.strerror or exc}.")
    err.errno = exc.errno
    err.filename = os.fspath(path)
    return err


def _parse_commit(where: str, commit: object, params: dict) -> dict | None:
    """Validate the manifest's ``commit`` section; None for a manifest written before commits existed."""
    if commit is None:
        return None
    if not isinstance(commit, dict):
        raise StoreFormatError(f"{where}: expected 'commit' to be an object, got {type(commit).__name__}.")
    for fld in ("generation", "step"):
        v = commit.get(fld)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise StoreFormatError(f"{where}: expected commit.{fld} to be an integer >= 0, got {v!r}.")
    sums = commit.get("checksums", {})
    if not isinstance(sums, dict) or any(
        not isinstance(v, list) or any(x is not None and (isinstance(x, bool) or not isinstance(x, int)) for x in v)
        for v in sums.values()
    ):
        raise StoreFormatError(f"{where}: expected commit.checksums to map keys to lists of integers.")
    if not isinstance(commit.get("metadata", {}), dict) or not isinstance(commit.get("stamps", {}), dict):
        raise StoreFormatError(f"{where}: expected commit.metadata and commit.stamps to be objects.")
    return commit


def _mostly_cold(misses: int, hits: int) -> bool:
    """Whether non-blocking probes of the page cache have failed often enough to stop probing: the rest of
    the reads then go straight to the (blocking, concurrent) reader."""
    return misses >= 16 and misses > 4 * hits


class RowFileIO:
    """Moves row runs between files and arrays with ``preadv``/``pwrite``.

    The planners turn a parameter's row range or sorted row set into ops
    ``(shard, file_offset, buf_offset, nbytes, where)`` over its shards
    (:class:`_Param`); the runners execute them (coalesced spans, a
    non-blocking page-cache probe, a thread pool for cold reads).  Used by
    :class:`MemmapStore` and by the HDF5 store's raw path.  A subclass provides
    ``path`` (the folder of the shard files, for messages), ``_fd(shard)``,
    ``_nowait`` (probe with ``RWF_NOWAIT``), ``_lock``, ``_pool`` (None until
    the pool is needed) and ``_written`` (a set; shards written are added).
    """

    def _pool_get(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=_MAX_WORKERS, thread_name_prefix="oocnet-memmap-io"
                    )
        return self._pool

    # -- low-level IO ---------------------------------------------------------------
    def _pread(self, shard: _Shard, fd: int, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` from ``offset``, looping on short reads."""
        try:
            while buf:
                n = os.preadv(fd, [buf], offset)
                if n == 0:
                    raise StoreIOError(
                        f"reading {self.path / shard.file} failed: unexpected end of file at byte {offset}."
                    )
                buf = buf[n:]
                offset += n
        except OSError as exc:
            if isinstance(exc, StoreIOError):
                raise
            raise _io_error(exc, "reading", self.path / shard.file) from exc

    def _pwrite(self, shard: _Shard, fd: int, buf: memoryview, offset: int) -> None:
        """Write all of ``buf`` at ``offset``, looping on short writes."""
        try:
            while buf:
                n = os.pwrite(fd, buf, offset)
                buf = buf[n:]
                offset += n
        except OSError as exc:
            raise _io_error(exc, "writing", self.path / shard.file) from exc

    def _range_ops(self, p: _Param, start: int, stop: int, piece: int | None = None) -> list:
        """Ops ``(shard, file_offset, buf_offset, nbytes, None)`` moving rows ``[start, stop)``.

        Row ``start`` is at buffer offset 0.  Pieces are cut to at most ``piece``
        bytes (whole rows) so that several can be in flight.
        """
        rb = p.info.row_nbytes
        step = max(1, piece // rb) if piece else stop - start
        i = int(np.searchsorted(p.stops, start, side="right"))
        ops, pos = [], start
        while pos < stop:
            s = p.shards[i]
            end = min(stop, s.stop)
            for a in range(pos, end, step):
                b = min(end, a + step)
                ops.append((s, s.offset + (a - s.start) * rb, (a - start) * rb, (b - a) * rb, None))
            pos = end
            i += 1
        return ops

    @staticmethod
    def _runs(p: _Param, rows: np.ndarray, step: int) -> tuple:
        """Sorted unique ``rows`` cut into runs within one shard whose rows are at most ``step`` apart:
        arrays of each run's first and end positions in ``rows``, its shard and its first row's file offset."""
        shard_of = np.searchsorted(p.stops, rows, side="right")
        brk = np.flatnonzero((np.diff(rows) > step) | (np.diff(shard_of) != 0)) + 1
        first = np.concatenate(([0], brk))
        end = np.concatenate((brk, [rows.size]))
        sh = shard_of[first]
        starts = np.array([s.start for s in p.shards], dtype=np.int64)
        offsets = np.array([s.offset for s in p.shards], dtype=np.int64)
        return first, end, sh, offsets[sh] + (rows[first] - starts[sh]) * p.info.row_nbytes

    def _index_ops(self, p: _Param, rows: np.ndarray) -> list:
        """Read ops for sorted unique ``rows``.

        A run of consecutive rows within one shard is one op ``(shard,
        file_offset, buf_offset, nbytes, None)``.  Runs less than ``_GAP_BYTES``
        apart are fetched as one span of at most ``_SPAN_BYTES`` into a scratch
        buffer and gathered: ops ``(shard, file_offset, None, nbytes, (k, kk,
        idx))`` put span rows ``idx`` into buffer rows ``[k, kk)``.
        """
        rb = p.info.row_nbytes
        first, end, sh, file_off = self._runs(p, rows, _GAP_BYTES // rb + 1)
        dense = rows[end - 1] + 1 - rows[first] == end - first  # no gaps: read straight into the buffer
        shards = p.shards
        f, e = first[dense], end[dense]
        ops = [
            (shards[k], fo, i * rb, n * rb, None)
            for k, fo, i, n in zip(sh[dense].tolist(), file_off[dense].tolist(), f.tolist(), (e - f).tolist())
        ]
        cap = max(1, _SPAN_BYTES // rb)
        for i, j, k_sh in zip(first[~dense].tolist(), end[~dense].tolist(), sh[~dense].tolist()):
            shard = shards[k_sh]
            k = i
            while k < j:  # cut the span into scratch-sized pieces
                a = int(rows[k])
                kk = k + int(np.searchsorted(rows[k:j], a + cap))
                b = int(rows[kk - 1]) + 1
                ops.append((shard, shard.offset + (a - shard.start) * rb, None, (b - a) * rb, (k, kk, rows[k:kk] - a)))
                k = kk
        return ops

    def _pread_cached(self, shard: _Shard, fd: int, buf: memoryview, offset: int) -> int:
        """Read what the page cache holds of ``buf``'s range without blocking; return the bytes read."""
        got = 0
        try:
            while got < len(buf):
                n = os.preadv(fd, [buf[got:]], offset + got, _RWF_NOWAIT)
                if n == 0:
                    break  # end of file: the blocking read reports it
                got += n
        except BlockingIOError:  # the rest is not cached
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise _io_error(exc, "reading", self.path / shard.file) from exc
            self._nowait = False  # not supported here: always read blocking
        return got

    def _run_reads(self, ops: list, out: np.ndarray) -> None:
        """Execute read ops into ``out``.

        Cached data is copied serially (threads only add hand-off cost and GIL
        contention); reads that must go to the disk run on the thread pool, up
        to _MAX_WORKERS in flight.  Where ``RWF_NOWAIT`` is available, a first
        non-blocking pass tells the two apart; elsewhere many ops go to the pool.
        """
        buf = _as_bytes(out)
        fds = {s.file: self._fd(s) for s in {op[0] for op in ops}}  # open before fanning out
        row_shape, dtype = out.shape[1:], out.dtype

        def scratch_for(scratch: np.ndarray | None, n: int) -> np.ndarray:
            if scratch is None or scratch.size < n:  # at most _SPAN_BYTES per reader
                scratch = np.empty(max(n, min(_SPAN_BYTES, 4 * n)), dtype=np.uint8)
            return scratch

        def gather(scratch: np.ndarray, n: int, where: tuple) -> None:
            k, kk, idx = where
            np.take(scratch[:n].view(dtype).reshape(-1, *row_shape), idx, axis=0, out=out[k:kk])

        known_cold = False
        if self._nowait:
            pending, hits, misses, scratch = [], 0, 0, None
            for i, op in enumerate(ops):
                if _mostly_cold(misses, hits):
                    pending.extend(ops[i:])
                    break
                shard, fo, bo, n, where = op
                if where is None:
                    got = self._pread_cached(shard, fds[shard.file], buf[bo : bo + n], fo)
                    if got < n:
                        pending.append((shard, fo + got, bo + got, n - got, None))
                else:
                    scratch = scratch_for(scratch, n)
                    got = self._pread_cached(shard, fds[shard.file], memoryview(scratch[:n]), fo)
                    if got == n:
                        gather(scratch, n, where)
                    else:
                        pending.append(op)
                if got == n:
                    hits += 1
                else:
                    misses += 1
            ops, known_cold = pending, self._nowait
            if not ops:
                return

        def work(lo: int, hi: int) -> None:
            scratch = None
            for shard, fo, bo, n, where in ops[lo:hi]:
                if where is None:
                    self._pread(shard, fds[shard.file], buf[bo : bo + n], fo)
                else:
                    scratch = scratch_for(scratch, n)
                    self._pread(shard, fds[shard.file], memoryview(scratch[:n]), fo)
                    gather(scratch, n, where)

        total = sum(op[3] for op in ops)
        few = len(ops) < (_PARALLEL_MIN_COLD if known_cold else _PARALLEL_MIN_READS)
        if few and total <= 2 * _PIECE_BYTES:
            work(0, len(ops))
            return
        # Contiguous groups of ops, one pool task each: enough tasks to keep
        # _MAX_WORKERS reads in flight, few enough that hand-off cost stays small.
        per_task = 1 if known_cold else _READS_PER_TASK
        wanted = max(math.ceil(len(ops) / per_task), math.ceil(total / _PIECE_BYTES))
        n_tasks = min(_MAX_WORKERS, len(ops), wanted)
        if n_tasks <= 1:
            work(0, len(ops))
            return
        bounds = np.linspace(0, len(ops), n_tasks + 1).astype(int).tolist()
        pool = self._pool_get()
        futures = [pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        for fut in futures:  # wait for all before raising, so no read outlives `out`
            fut.exception()
        for fut in futures:
            fut.result()

    def _read_scattered(self, p: _Param, rows: np.ndarray, out: np.ndarray) -> None:
        """Read sorted unique ``rows`` into ``out``.

        A step's cache misses are a few hundred rows scattered over the table,
        nearly all in the page cache.  For them, op tuples and the general
        reader's per-op calls cost ~2 us of Python a row, more than the
        ``preadv`` itself (~1.5 us): as for index writes (:meth:`_write_runs`),
        runs of consecutive rows are found in numpy and read straight into
        ``out`` by a tight loop of non-blocking ``preadv`` calls.  Runs not
        wholly cached, and row sets dense enough that reading the gaps between
        nearby rows saves calls (the general reader's spans), go to
        :meth:`_run_reads`.
        """
        rb = p.info.row_nbytes
        first, end, sh, file_off = self._runs(p, rows, 1)
        if not self._nowait or first.size * 4 > 5 * self._runs(p, rows, _GAP_BYTES // rb + 1)[0].size:
            self._run_reads(self._index_ops(p, rows), out)
            return
        buf = _as_bytes(out)
        cut = np.flatnonzero(np.diff(sh)) + 1
        left: list[int] = []  # runs for the general reader
        hits, cold = 0, False
        for a, b in zip([0, *cut.tolist()], [*cut.tolist(), sh.size]):
            if cold:
                left.extend(range(a, b))
                continue
            shard = p.shards[int(sh[a])]
            fd = self._fd(shard)
            for j, fo, bo, n in zip(range(a, b), file_off[a:b].tolist(), (first[a:b] * rb).tolist(),
                                    ((end[a:b] - first[a:b]) * rb).tolist()):
                if _mostly_cold(len(left), hits):
                    cold = True
                    left.extend(range(j, b))
                    break
                if self._pread_cached(shard, fd, buf[bo : bo + n], fo) == n:
                    hits += 1
                else:
                    left.append(j)
        if left:
            at = np.concatenate([np.arange(first[j], end[j]) for j in left])
            rest = np.empty((at.size, *out.shape[1:]), dtype=out.dtype)
            self._run_reads(self._index_ops(p, rows[at]), rest)
            out[at] = rest

    def _write_runs(self, p: _Param, rows: np.ndarray, value: np.ndarray) -> None:
        """Write ``value`` to sorted unique ``rows``: one ``pwrite`` per run of consecutive rows.

        An eviction writes thousands of scattered single rows; building an op
        tuple for each and writing it through :meth:`_run_writes` cost ~0.7 us
        of Python a row, a fifth to a quarter of the row's whole cost.
        """
        rb = p.info.row_nbytes
        first, end, sh, file_off = self._runs(p, rows, 1)
        buf = _as_bytes(value)
        cut = np.flatnonzero(np.diff(sh)) + 1  # runs come in shard order: one stretch per shard
        pwrite = os.pwrite
        for a, b in zip([0, *cut.tolist()], [*cut.tolist(), sh.size]):
            shard = p.shards[int(sh[a])]
            fd = self._fd(shard)
            self._written.add(shard)
            try:
                for fo, bo, n in zip(file_off[a:b].tolist(), (first[a:b] * rb).tolist(),
                                     ((end[a:b] - first[a:b]) * rb).tolist()):
                    done = pwrite(fd, buf[bo : bo + n], fo)
                    if done != n:  # a short write: the careful loop finishes it (or raises)
                        self._pwrite(shard, fd, buf[bo + done : bo + n], fo + done)
            except StoreIOError:
                raise
            except OSError as exc:
                raise _io_error(exc, "writing", self.path / shard.file) from exc

    def _run_writes(self, ops: list, value: np.ndarray, paged: bool = False) -> None:
        """Execute write ops from ``value``.

        Exact runs only (no read-modify-write of gaps, so concurrent writers of
        neighbouring rows cannot undo each other).  Writes land in the page
        cache; there is nothing to gain from concurrency.  With ``paged``, each
        run is cut at page boundaries: the kernel sizes the cache pages a write
        creates by the write's length, and a table whose rows are later
        rewritten one at a time must be cached in single pages (see
        :func:`_advise_random`).  A new table's values are written this way.
        """
        buf = _as_bytes(value)
        for shard, fo, bo, n, _ in ops:
            fd = self._fd(shard)
            if not paged:
                self._pwrite(shard, fd, buf[bo : bo + n], fo)
            else:
                end, pos = fo + n, fo
                while pos < end:
                    nxt = min(end, (pos // _PAGE + 1) * _PAGE)
                    self._pwrite(shard, fd, buf[bo + pos - fo : bo + nxt - fo], pos)
                    pos = nxt
            self._written.add(shard)


class MemmapStore(RowFileIO, DurableStore, Store):
    """Parameters in a folder of ``.npy`` row shards, moved with pread/pwrite.

    The format is specified in this module's docstring.  Rows are read into
    and written from caller buffers; no memory map is kept, so reading a
    parameter adds to RSS only the buffer it is read into (plus at most 256 KiB
    of scratch per reader thread).  Scattered rows are coalesced into runs;
    for reads, runs less than 16 KiB apart are fetched as one span and
    gathered, and many reads are issued concurrently (up to 32 in flight).

    Reads and writes of existing parameters may come from several threads (the
    pager prefetches in the background); ``create``, ``delete``, ``flush`` and
    ``close`` must not race with other calls.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.  It is created (with missing parents) if it does not exist,
        unless ``read_only``.  An existing folder must hold a ``manifest.json``
        or be empty.
    read_only : bool
        Refuse writes; files are opened read-only and no lock is taken.
    shard_bytes : int
        Target bytes per shard file for parameters created from now on; a shard
        holds ``max(1, shard_bytes // row_nbytes)`` rows.  Existing parameters
        keep the shards recorded in the manifest.

    Raises
    ------
    StoreError
        ``path`` is a file, a non-empty folder without a manifest, missing
        while ``read_only``, or locked by another writer.
    StoreFormatError
        The manifest or a shard header is invalid or from a newer version.
    StoreIOError
        The folder or its files cannot be read or written.
    ConfigError
        ``shard_bytes`` is not a positive integer.

    Examples
    --------
    >>> with MemmapStore(tmp / "params") as store:            # doctest: +SKIP
    ...     store.create("emb/W", (1_000_000, 128), init=lambda a, b: rng.random((b - a, 128)))
    ...     rows = store.read_index("emb/W", [3, 17, 123_456])
    """

    backend = "memmap"
    persistent = True
    zero_copy = False

    def __init__(self, path, *, read_only: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 verify: bool = True, allow_corrupt: bool = False) -> None:
        super().__init__(read_only=read_only)
        self._durable_init(-1)
        self._closed = True  # until the folder is validated; close() is then a no-op
        check_positive_int("shard_bytes", shard_bytes)
        self.path = check_path(path)
        if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
            raise StoreError("the memmap store stores little-endian rows and supports little-endian hosts only.")
        self.shard_bytes = int(shard_bytes)
        self._params: dict[str, _Param] = {}
        self._fds: dict[str, int] = {}  # shard file name -> open fd (lazily)
        self._written: set[_Shard] = set()  # shards written since the last flush
        self._lock = threading.Lock()  # guards lazy fd opening and pool creation
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._nowait = _RWF_NOWAIT is not None  # probe the page cache before reading (see _run_reads)
        self._dir_fd = -1
        self._commit_record: dict | None = None
        try:
            self._open_folder()
            self._dir_fd_durable = self._dir_fd
            self._closed = False
            self._durable_open(self._commit_record, verify, allow_corrupt)
        except BaseException:
            self._closed = True
            self._release()
            raise

    # -- opening --------------------------------------------------------------------
    def _open_folder(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise StoreError(f"memmap store path {p} is a file; expected a folder (or a path ending in .h5 for HDF5).")
        if not p.exists():
            if self.read_only:
                raise StoreError(
                    f"no memmap store at {p}: the folder does not exist (read_only=True does not create it)."
                )
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _io_error(exc, "creating the folder", p) from exc
        try:
            self._dir_fd = os.open(p, os.O_RDONLY)
        except OSError as exc:
            raise _io_error(exc, "opening the folder", p) from exc
        manifest = p / MANIFEST
        if not manifest.exists():
            try:
                others = sorted(e.name for e in os.scandir(p) if e.name not in (_MANIFEST_TMP, LOCK, JOURNAL))
            except OSError as exc:
                raise _io_error(exc, "listing", p) from exc
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                raise StoreError(
                    f"folder {p} is not a memmap store: expected {MANIFEST} or an empty folder, got {shown}."
                )
            if self.read_only:
                raise StoreError(f"no memmap store at {p}: the folder is empty (no {MANIFEST}).")
            self._lock_fd = acquire_lock(p / LOCK, p)
            self._write_manifest()  # a fresh store always has a manifest
            return
        if not self.read_only:
            self._lock_fd = acquire_lock(p / LOCK, p)
        self._load_manifest(manifest)

    def _load_manifest(self, manifest: Path) -> None:
        try:
            text = manifest.read_bytes()
        except OSError as exc:
            raise _io_error(exc, "reading", manifest) from exc
        where = str(manifest)
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"{where}: expected a JSON object, got invalid JSON ({exc}).") from exc
        if not isinstance(doc, dict):
            raise StoreFormatError(f"{where}: expected a JSON object, got {type(doc).__name__}.")
        fmt = doc.get("format")
        if fmt != FORMAT_NAME:
            raise StoreFormatError(f"{where}: expected format {FORMAT_NAME!r}, got {fmt!r}.")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreFormatError(f"{where}: expected version {FORMAT_VERSION} (an integer), got {version!r}.")
        if version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{where}: expected version {FORMAT_VERSION} or older, got {version}; "
                "the store was written by a newer oocnet, upgrade to read it."
            )
        check_seal(where, doc)
        params = doc.get("params")
        if not isinstance(params, dict):
            raise StoreFormatError(f"{where}: expected 'params' to be an object, got {type(params).__name__}.")
        self._commit_record = _parse_commit(where, doc.get("commit"), params)
        seen_files: set[str] = set()
        for key, entry in params.items():
            self._params[key] = self._parse_entry(where, key, entry, seen_files)
            if isinstance(entry, dict) and entry.get("lazy") is True:
                self._lazy_keys.add(key)

    def _parse_entry(self, where: str, key: str, entry: object, seen_files: set[str]) -> _Param:
        try:
            validate_key(key)
        except ConfigError as exc:
            raise StoreFormatError(f"{where}: invalid parameter key: {exc}") from exc
        at = f"{where}: params[{key!r}]"
        if not isinstance(entry, dict):
            raise StoreFormatError(f"{at}: expected an object, got {type(entry).__name__}.")
        shape = entry.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape)
        ):
            raise StoreFormatError(f"{at}: expected 'shape' to be a list of positive integers, got {shape!r}.")
        dtype_name = entry.get("dtype")
        try:
            if not isinstance(dtype_name, str):
                raise ConfigError("not a string")
            dtype = validate_dtype(dtype_name)
        except ConfigError as exc:
            raise StoreFormatError(
                f"{at}: expected 'dtype' to be one of float16, float32, float64, int32, int64, uint8, "
                f"got {dtype_name!r}."
            ) from exc
        info = ParamInfo(key, tuple(shape), dtype)
        raw_shards = entry.get("shards")
        if not isinstance(raw_shards, list) or not raw_shards:
            raise StoreFormatError(f"{at}: expected 'shards' to be a non-empty list, got {raw_shards!r}.")
        shards: list[_Shard] = []
        expect_start = 0
        for i, s in enumerate(raw_shards):
            sat = f"{at}.shards[{i}]"
            if not isinstance(s, dict):
                raise StoreFormatError(f"{sat}: expected an object, got {type(s).__name__}.")
            name = s.get("file")
            if (
                not isinstance(name, str)
                or not name.endswith(".npy")
                or name in (MANIFEST, _MANIFEST_TMP)
                or os.path.basename(name) != name
                or "/" in name
                or "\\" in name
                or "\x00" in name
            ):
                raise StoreFormatError(f"{sat}: expected 'file' to be a plain file name ending in .npy, got {name!r}.")
            if name in seen_files:
                raise StoreFormatError(f"{sat}: expected a file used by one shard only, got {name!r} again.")
            seen_files.add(name)
            start, stop = s.get("start"), s.get("stop")
            for fld, v in (("start", start), ("stop", stop)):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise StoreFormatError(f"{sat}: expected '{fld}' to be an integer, got {v!r}.")
            if start != expect_start:
                raise StoreFormatError(
                    f"{sat}: shards must tile rows [0, {info.n_rows}): expected start {expect_start}, got {start}."
                )
            if not start < stop <= info.n_rows:
                raise StoreFormatError(
                    f"{sat}: expected {start} < stop <= {info.n_rows}, got stop {stop}."
                )
            crc = s.get("crc32")
            if crc is not None and (isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc < 2**32):
                raise StoreFormatError(f"{sat}: expected 'crc32' to be null or an integer in [0, 2**32), got {crc!r}.")
            rows = stop - start
            offset = self._check_shard_file(sat, name, (rows, *info.row_shape), dtype, rows * info.row_nbytes)
            shards.append(_Shard(name, start, stop, crc, offset))
            expect_start = stop
        if expect_start != info.n_rows:
            raise StoreFormatError(
                f"{at}: shards must tile rows [0, {info.n_rows}): "
                f"expected the last stop {info.n_rows}, got {expect_start}."
            )
        return _Param(info, shards)

    def _check_shard_file(self, at: str, name: str, shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> int:
        """Validate a shard's .npy header and length; return the data offset."""
        path = self.path / name
        try:
            f = open(path, "rb")
        except FileNotFoundError as exc:
            raise StoreFormatError(f"{at}: expected shard file {path} to exist, got no such file.") from exc
        except OSError as exc:
            raise _io_error(exc, "opening", path) from exc
        with f:
            try:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise StoreFormatError(f"{at}: expected {path} to be a regular file.")
                version = np.lib.format.read_magic(f)
                if version != (1, 0):
                    raise StoreFormatError(
                        f"{at}: expected .npy format version 1.0 in {path}, got {version[0]}.{version[1]}."
                    )
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
                offset = f.tell()
            except StoreFormatError:
                raise
            except OSError as exc:
                raise _io_error(exc, "reading", path) from exc
            except Exception as exc:  # damaged header bytes fail numpy's parser in many ways (tokenize.TokenError...)
                raise StoreFormatError(f"{at}: expected a .npy header in {path}, got an invalid one "
                                       f"({type(exc).__name__}: {exc}).") from exc
        want_dtype = _file_dtype(dtype)
        if tuple(got_shape) != shape or got_dtype != want_dtype or fortran:
            got = f"shape {tuple(got_shape)} {got_dtype.str}{' Fortran order' if fortran else ''}"
            raise StoreFormatError(f"{at}: expected {path} to hold shape {shape} {want_dtype.str} C order, got {got}.")
        if st.st_size != offset + nbytes:
            raise StoreFormatError(f"{at}: expected {path} to be {offset + nbytes} bytes long, got {st.st_size}.")
        return offset

    # -- manifest -------------------------------------------------------------------
    def _manifest_doc(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "commit": self._commit_record if self._commit_record is not None else {
                "generation": 0, "step": 0, "metadata": {}, "time": None, "checksums": {}, "stamps": {}},
            "params": {
                key: {
                    "shape": list(p.info.shape),
                    "dtype": p.info.dtype.name,
                    "shards": [
                        {"file": s.file, "start": s.start, "stop": s.stop} for s in p.shards
                    ],
                    **({"lazy": True} if key in self._lazy_keys else {}),
                }
                for key, p in self._params.items()
            },
        }

    def _write_manifest(self) -> None:
        """Replace manifest.json atomically: temp file, fsync, rename, fsync the folder."""
        data = json.dumps(sealed(self._manifest_doc()), indent=1).encode("ascii")
        write_atomic(self.path / MANIFEST, data, self._dir_fd)

    # -- files ----------------------------------------------------------------------
    def _fd(self, shard: _Shard) -> int:
        fd = self._fds.get(shard.file)
        if fd is None:
            with self._lock:  # two threads must not both open (and leak) an fd
                fd = self._fds.get(shard.file)
                if fd is None:
                    path = self.path / shard.file
                    try:
                        fd = os.open(path, os.O_RDONLY if self.read_only else os.O_RDWR)
                    except OSError as exc:
                        raise _io_error(exc, "opening", path) from exc
                    _advise_random(fd)
                    self._fds[shard.file] = fd
        return fd

    def _close_fd(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def _file_stem(self, key: str) -> str:
        """A file-name stem for ``key`` that no other parameter's files use, ignoring case."""
        stem = quote(key, safe="")
        if len(stem) > _MAX_STEM:
            stem = stem[: _MAX_STEM - 20] + "~" + hashlib.sha1(key.encode()).hexdigest()[:16]
        # quote() is injective, but case-insensitive filesystems (macOS, Windows) fold
        # "W" and "w"; avoid any stem another parameter's files already use.
        # Every shard of a parameter shares its stem: one file name per parameter is enough.
        taken = {p.shards[0].file.rsplit(".", 2)[0].casefold() for p in self._params.values() if p.shards}
        candidate, n = stem, 0
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}~{n}"
        return candidate

    # -- Store hooks ----------------------------------------------------------------
    def _keys(self) -> list[str]:
        return list(self._params)

    def _has(self, key: str) -> bool:
        return key in self._params

    def _info(self, key: str) -> ParamInfo:
        return self._params[key].info

    def _read_rows(self, key, start, stop, out):
        p = self._params[key]
        self._run_reads(self._range_ops(p, start, stop, piece=_PIECE_BYTES), out)

    def _read_index(self, key, rows, out):
        self._read_scattered(self._params[key], rows, out)

    def _write_rows(self, key, start, value):
        p = self._params[key]
        self._run_writes(self._range_ops(p, start, start + value.shape[0]), value)

    def _write_index(self, key, rows, value):
        self._write_runs(self._params[key], rows, value)

    def _create(self, info: ParamInfo, init: RowInitializer | None) -> None:
        per_shard = max(1, self.shard_bytes // info.row_nbytes)
        self._check_room(info, -(-info.n_rows // per_shard))
        stem = self._file_stem(info.key)
        shards: list[_Shard] = []
        try:
            for i, a in enumerate(range(0, info.n_rows, per_shard)):
                b = min(info.n_rows, a + per_shard)
                shard = _Shard(f"{stem}.{i:05d}.npy", a, b, None, 0)
                shards.append(shard)
                header = _npy_header((b - a, *info.row_shape), info.dtype)
                shard.offset = len(header)
                path = self.path / shard.file
                try:
                    # O_TRUNC: a file of that name can only be an orphan of a deleted
                    # parameter (the manifest references no file with this stem).
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                    self._fds[shard.file] = fd
                    _advise_random(fd)
                    self._pwrite(shard, fd, memoryview(header), 0)
                    os.ftruncate(fd, len(header) + (b - a) * info.row_nbytes)
                    if init is None:  # already reads as zeros (a hole); allocate its blocks where we can
                        zero_region(fd, len(header), (b - a) * info.row_nbytes)
                except OSError as exc:
                    if isinstance(exc, StoreIOError):
                        raise
                    raise _io_error(exc, "creating", path) from exc
            p = _Param(info, shards)
            if init is not None:
                for a, b in chunk_rows(info):  # ~16 MiB of rows in RAM at a time
                    value = init(a, b)
                    self._run_writes(self._range_ops(p, a, b), value, paged=True)
            # Neither fsynced nor written to the manifest here: a parameter created since the last
            # commit is dropped by a rollback anyway, and the next commit (or any manifest write)
            # lists it after syncing its files (_written).  One manifest write per create made
            # creating n parameters O(n^2) -- minutes for a model with a thousand arrays.
            self._params[info.key] = p
        except BaseException:
            # Leave no trace: the store is as it was before create() was called.
            if self._params.pop(info.key, None) is not None:
                try:  # the manifest may have been replaced before the failure
                    self._write_manifest()
                except StoreIOError:
                    pass
            for shard in shards:
                self._written.discard(shard)
                self._close_fd(shard.file)
                try:
                    os.unlink(self.path / shard.file)
                except OSError:
                    pass
            raise
        self._written.update(shards)  # checksums are recorded at the next flush

    def _check_room(self, info: ParamInfo, n_shards: int) -> None:
        """Refuse, before any file is made, a parameter the disk or the open-file limit cannot take.

        Every parameter takes its bytes at creation: written values, or blocks allocated for zeros.
        """
        check_disk_room(info, self.path)
        # Every shard keeps a file open; raise the soft limit towards the hard one when needed.
        need = len(self._fds) + n_shards + 64
        try:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY and need > soft:
                want = need if hard == resource.RLIM_INFINITY else min(hard, max(need, 2 * soft))
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
        except (ImportError, ValueError, OSError):
            return  # no rlimits here: the OS reports EMFILE itself if it comes to that
        if soft != resource.RLIM_INFINITY and need > soft:
            raise StoreIOError(f"parameter {info.key!r} needs {n_shards} shard files; with the {len(self._fds)} the "
                               f"store has open (and 64 kept for the rest of the process) that is more than the "
                               f"{soft} files this process may open. Open the store with a larger shard_bytes (now "
                               f"{self.shard_bytes}).")

    def _delete(self, key):
        p = self._params.pop(key)
        self._lazy_keys.discard(key)
        try:
            self._write_manifest()  # first forget the files, then remove them
        except BaseException:
            self._params[key] = p
            raise
        for shard in p.shards:
            self._written.discard(shard)
            self._close_fd(shard.file)
            try:
                os.unlink(self.path / shard.file)
            except OSError:
                pass  # an unreferenced file is harmless; the manifest no longer names it

    def _flush(self) -> None:
        pass  # pwrite already handed the bytes to the OS; commit() makes them durable

    def _sync_data(self) -> None:
        for shard in list(self._written):
            try:
                os.fsync(self._fd(shard))
            except OSError as exc:
                raise _io_error(exc, "syncing", self.path / shard.file) from exc
            self._written.discard(shard)

    # -- durability hooks (see oocnet.store.durable) ------------------------------------
    def _lazy_place(self) -> tuple[Path, str]:
        return self.path, "#written."  # quote() escapes '#': no shard stem starts with it

    def _journal_path(self) -> Path:
        return self.path / JOURNAL

    def _blocks(self, key: str) -> np.ndarray:
        return np.array([s.start for s in self._params[key].shards], dtype=np.int64)

    def _block_label(self, key: str, i: int) -> str:
        return self._params[key].shards[i].file

    def _block_files(self, key: str) -> list[Path]:
        return [self.path / s.file for s in self._params[key].shards]

    def _commit_record_path(self) -> Path:
        return self.path / MANIFEST

    def _read_commit(self) -> dict:
        try:
            doc = json.loads((self.path / MANIFEST).read_bytes())
            commit = doc.get("commit") or {}
            if not isinstance(commit, dict):
                raise TypeError(f"expected 'commit' to be an object, got {type(commit).__name__}")
            return commit
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise StoreIOError(f"reading {self.path / MANIFEST} failed: {exc}.") from exc

    def _persist_commit(self, record: dict) -> None:
        old = self._commit_record
        # Parameters deleted since the last commit leave the manifest with this commit, not before.
        gone = {k: self._params.pop(k) for k in sorted(self._pending_delete) if k in self._params}
        self._commit_record = record
        try:
            self._write_manifest()
        except BaseException:
            self._commit_record = old
            self._params.update(gone)
            raise
        self._params.update(gone)  # _finish_deletes removes their files (and forgets them)

    def _drop_params(self, keys: list[str]) -> None:
        for key in keys:
            if key in self._params:
                self._delete(key)


    def _crc_span(self, shard: _Shard, fd: int, buf: memoryview, row_nbytes: int) -> int:
        """zlib.crc32 of a shard's data bytes, read through ``buf`` (bounded memory)."""
        crc = 0
        pos, end = shard.offset, shard.offset + (shard.stop - shard.start) * row_nbytes
        while pos < end:
            n = min(len(buf), end - pos)
            self._pread(shard, fd, buf[:n], pos)
            crc = zlib.crc32(buf[:n], crc)
            pos += n
        return crc

    def _release(self) -> None:
        self._durable_close()
        for name in list(self._fds):
            self._close_fd(name)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)  # also drops the flock
            self._dir_fd = -1

    def _close(self) -> None:
        self._release()

    # -- extras ---------------------------------------------------------------------
    def shard_files(self, key: str) -> list[Path]:
        """Paths of the ``.npy`` shard files of ``key``, in row order.

        Each can be opened with ``np.load(path, mmap_mode="r")``.
        """
        self._checked_info(key)
        return [self.path / s.file for s in self._params[key].shards]

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" at {str(self.path)!r}>"
