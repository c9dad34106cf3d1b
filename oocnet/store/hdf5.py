"""The HDF5 store: one ``.h5`` file, one chunked dataset per parameter.

HDF5 suits users who want a single file they can open with ``h5py``, HDFView
or any HDF5 reader.  Rows move between the file and buffers the caller owns
(``preadv``/``pwrite`` on the file's descriptor where a dataset's layout allows,
else HDF5 hyperslab reads straight into ``out``); nothing is memory-mapped.

On-disk format, version 2
=========================

Version 2 added lazily created parameters (attribute ``oocnet_lazy`` and the
commit record's ``lazy`` section); version-1 files are read.

An ordinary HDF5 file (any superblock version the HDF5 library reads).

Root group attributes
---------------------
``oocnet_format``
    Variable-length string, exactly ``"oocnet-hdf5"``.
``oocnet_version``
    Integer, ``1``.  A reader refuses a larger version.

Parameters
----------
Each parameter is a dataset:

* its HDF5 path is the key, ``/``-separated components mapping onto groups
  (``"dense_0/W"`` is dataset ``W`` in group ``dense_0``; ``":"`` is legal in
  HDF5 names, so ``"dense_0/W:adagrad"`` sits beside it).  Within a component,
  ``%`` is written ``%25``, and a component that is exactly ``.`` or ``..`` is
  written ``%2E`` / ``%2E%2E``.  Because groups and datasets share one
  namespace, no key may be a ``/``-prefix of another (``"a"`` and ``"a/b"``);
  creating such a key raises :class:`~oocnet.errors.ConfigError`;
* shape ``(n_rows, d1, ...)`` with at least one axis, all positive; dtype
  float16, float32, float64, int32, int64 or uint8, written little-endian;
* chunked along rows: chunk shape ``(min(n_rows, max(1, chunk_bytes //
  row_nbytes)), d1, ...)`` -- whole rows, so a row range touches few chunks;
  no compression or other filters; fill value 0.  A dataset created without
  initial values has fill time "never": HDF5 does not write its zeros;
  oocnet makes the chunks' bytes read as zeros with ``fallocate`` (or writes
  them where the OS cannot);
* allocated early (all chunks exist from creation) and without timestamps, so
  that writing rows never changes HDF5 metadata;
* attribute ``oocnet_key`` (variable-length string, the parameter key; it is
  what makes a dataset a parameter, so other objects in the file are ignored).
  An attribute ``crc32`` written by earlier versions is ignored.

Beside the file
---------------
``<file>.commit.json``: the commit record (:mod:`oocnet.store.durable`),
``{"format": "oocnet-hdf5-commit", "version": 2, "generation", "step",
"metadata", "time", "checksums": {key: [u64]}, "stamps": {file: [size,
mtime_ns], "crc": u32}`` -- one checksum per dataset (:mod:`oocnet.store.checksum`),
replaced atomically at each commit.  ``crc`` is the crc32 of the record's canonical
JSON without it (:func:`oocnet.store.durable.sealed`); a record without one (older
versions) is read as it is.  It lives outside the HDF5 file so that a
commit never rewrites HDF5 metadata.  A lazily created parameter (rows never
written are computed from their initializer) adds ``"lazy": {key: {"init":
spec, "file": name, "crc": crc32}}``; the file
``<file>.written.<16 hex digits>.<generation>`` beside it holds one bit per row
(see :mod:`oocnet.store.durable` and the memmap store's format).  A dataset
created lazily carries the attribute ``oocnet_lazy = 1``; if its commit has no
``lazy`` entry the store is refused.  ``<file>.journal``: the rollback journal
between a write and the next commit.  ``<file>.lock``: the writer lock, holding
the writer's pid.

Readers find parameters by their ``oocnet_key`` attribute, not by path, so a
dataset moved or renamed with another tool stays readable.  Every field above
is checked on open and a mismatch raises :class:`~oocnet.errors.StoreFormatError`
saying what was expected and what was found.

Writing protocol
----------------
Rows are written in place, each first journaled (old bytes appended to
``<file>.journal`` and fsynced).  A commit flushes HDF5's buffers, fsyncs the
file, records the datasets' checksums and the step in the sidecar, then
deletes the journal; opening rolls a leftover journal back.  Because datasets
are allocated early and carry no timestamps, training writes only raw chunk
bytes, so a crash between commits cannot damage the file's structure -- the
kill tests (tests/test_durability.py) check this.  Creating or deleting a
parameter does write HDF5 metadata: a crash *during* that can still damage
the file (the model creates parameters once, and commits right after).
Deleting a parameter unlinks its dataset; HDF5 does not return the space to
the file system (``h5repack`` does).  One writer at a time (the lock file);
HDF5's own file locking is off because it would also lock readers out.

Row IO
------
A dataset laid out as the store creates it (chunked along rows only, whole
rows per chunk, no filters, every chunk allocated, native byte order, a
``sec2`` file without a user block) has fixed chunk addresses, so row ``r`` is
at ``chunk_offset[r // rows_per_chunk] + (r % rows_per_chunk) * row_nbytes``.
Its rows are read and written with ``preadv``/``pwrite`` on HDF5's own file
descriptor, planned and run by the memmap store's code (runs of rows,
coalesced reads, a thread pool for cold reads): about 3-5 us a scattered row
against 15-20 us to read and 30-50 us to write one through an HDF5 hyperslab.
Any other dataset (one written by another tool, say compressed) goes through
HDF5 hyperslabs.  The file is advised ``POSIX_FADV_RANDOM``, and a new dataset
of 1 MiB or more is fsynced and dropped from the page cache after its initial
values are written, so that its pages come back page-sized (see
``HDF5Store._uncache``).

Memory
------
The file is opened with HDF5's chunk cache turned off (``rdcc_nbytes=0``) and
without a sieve buffer, so HDF5 holds no copy of raw data that the raw path
could leave stale.  The chunk cache would also keep up to 1 MiB per open
dataset, outside the pager's byte budget.  Hyperslab index reads and writes
use one scratch buffer of 4 MiB per thread; raw reads at most 256 KiB per
reader thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import sys
import threading
import zlib

from pathlib import Path

import h5py
import numpy as np
from h5py import h5s

from ..errors import ConfigError, OocnetError, StoreError, StoreFormatError, StoreIOError
from .durable import DurableStore, acquire_lock, check_seal, sealed, write_atomic
from .memmap import _PIECE_BYTES, _RWF_NOWAIT, RowFileIO, _advise_random, _Param, _Shard, zero_region
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

FORMAT_NAME = "oocnet-hdf5"
FORMAT_VERSION = 2  # 2: lazily created parameters (attribute oocnet_lazy, "lazy" in the commit record)
COMMIT_FORMAT = "oocnet-hdf5-commit"

#: Default target bytes per HDF5 chunk.
DEFAULT_CHUNK_BYTES = 1 * 2**20

# Index IO: each HDF5 call costs ~15 us of fixed overhead (~55 us through
# Dataset.read_direct), about the time to move 128 KiB of cached data.  So rows
# separated by gaps of up to _GAP_BYTES are fetched as one span through a scratch
# buffer and gathered, instead of one call per run.  For 100k random rows of a
# 1e6 x 128 float32 parameter this is ~10x faster than h5py fancy indexing.
_GAP_BYTES = 256 * 2**10
_SCRATCH_BYTES = 4 * 2**20
# A new dataset of at least this size is dropped from the page cache after its
# initial values are written (see HDF5Store._uncache); a smaller one costs at most
# its size in write amplification, less than the fsync would.
_UNCACHE_MIN_BYTES = 1 * 2**20
# Checksums are computed over row chunks of about this size.
_CRC_CHUNK_BYTES = 4 * 2**20
# HDF5 refuses chunks of 4 GiB or more.
_MAX_CHUNK_BYTES = 2**32 - 1

# Files open for writing by a store of this process.  HDF5's own file lock keeps
# other processes out, but a second open in the same process silently shares the
# file, and two stores would then disagree about which parameters exist.
_WRITERS: set[str] = set()
_WRITERS_LOCK = threading.Lock()


def _escape(component: str) -> str:
    """HDF5 link name for one key component (injective, see the module docstring)."""
    component = component.replace("%", "%25")
    if component in (".", ".."):
        component = component.replace(".", "%2E")
    return component


def _h5_path(key: str) -> str:
    return "/" + "/".join(_escape(c) for c in key.split("/"))


def _as_str(value: object) -> object:
    """An HDF5 string attribute as str (h5py returns str or bytes)."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, np.str_):
        return str(value)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class _Hyperslab:
    """Row transfers between one dataset and one array via HDF5 hyperslabs.

    Uses h5py's low-level API: one call costs ~15 us against ~55 us for
    ``Dataset.read_direct``, which rebuilds both selections each time.
    """

    def __init__(self, ds: h5py.Dataset, arr: np.ndarray) -> None:
        self.dsid = ds.id
        self.arr = arr
        self.fspace = ds.id.get_space()
        self.mspace = h5s.create_simple(arr.shape)
        self.zeros = (0,) * (arr.ndim - 1)
        self.row_shape = tuple(arr.shape[1:])

    def _select(self, src: int, dst: int, n: int) -> None:
        self.fspace.select_hyperslab((src, *self.zeros), (n, *self.row_shape))
        self.mspace.select_hyperslab((dst, *self.zeros), (n, *self.row_shape))

    def read(self, src: int, dst: int, n: int) -> None:
        """Dataset rows ``[src, src+n)`` -> array rows ``[dst, dst+n)``."""
        self._select(src, dst, n)
        self.dsid.read(self.mspace, self.fspace, self.arr)

    def write(self, src: int, dst: int, n: int) -> None:
        """Array rows ``[src, src+n)`` -> dataset rows ``[dst, dst+n)``."""
        self._select(dst, src, n)
        self.dsid.write(self.mspace, self.fspace, self.arr)


class _Mover(RowFileIO):
    """Row transfers with ``preadv``/``pwrite`` on the HDF5 file's own descriptor.

    A dataset that :meth:`HDF5Store._raw_layout` accepts is described as a
    memmap-store parameter (:class:`~oocnet.store.memmap._Param`) whose
    "shards" are its runs of chunks lying back to back in the file (usually one
    run: chunks allocated early at creation are consecutive), all naming this
    one file, and moved by :class:`~oocnet.store.memmap.RowFileIO`, the memmap
    store's row IO (coalescing, the page-cache probe, the thread pool for cold
    reads).
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path.parent  # error messages name ``path / shard.file``
        self.name = path.name
        self.fd = fd
        self._nowait = _RWF_NOWAIT is not None
        self._lock = threading.Lock()  # guards the lazy pool
        self._pool = None
        self._written: set = set()  # filled by _run_writes; unused (the store tracks written keys)

    def _fd(self, shard: _Shard) -> int:
        return self.fd

    def read(self, ops: list, out: np.ndarray) -> None:
        """Execute read ops (from ``_range_ops`` / ``_index_ops``) into ``out``."""
        self._run_reads(ops, out)

    def write(self, ops: list, value: np.ndarray) -> None:
        """Execute write ops (exact runs) from ``value``."""
        self._run_writes(ops, value)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# What HDF5 says when a file's bytes, not the system, are at fault.
_DAMAGED = ("truncated file", "signature", "superblock", "bad object header", "checksum", "adjustment for eoa")


def lazy_prefix(path: Path) -> str:
    """The name prefix of an HDF5 store's written-row bitmaps, which lie beside the file."""
    return Path(path).name + ".written."


class HDF5Store(DurableStore, Store):
    """Parameters in one HDF5 file, one chunked dataset per parameter.

    The format is specified in this module's docstring.  Rows are read into
    and written from the caller's buffers, with pread/pwrite where the
    dataset's layout allows ("Row IO" in the module docstring), else through
    HDF5 hyperslabs, whose index reads and writes coalesce the sorted rows into
    spans (see ``_GAP_BYTES``).

    The store may be used from several threads (the pager prefetches in the
    background): HDF5 calls are serialised by h5py's global lock, raw reads run
    concurrently, writes take the store's write lock; ``create``, ``delete``,
    ``flush`` and ``close`` must not race with other calls.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.h5`` file.  Created (with missing parent folders) if it does not
        exist, unless ``read_only``.
    read_only : bool
        Open the file read-only and refuse writes.
    chunk_bytes : int
        Target bytes per HDF5 chunk for datasets created from now on; a chunk
        holds ``max(1, chunk_bytes // row_nbytes)`` whole rows.

    Raises
    ------
    StoreError
        ``path`` is a folder, is missing while ``read_only``, or is open for
        writing by another store of this process.
    StoreFormatError
        The file is not HDF5, lacks the oocnet root attributes, is of a newer
        version, or a parameter dataset is invalid.
    StoreIOError
        The file cannot be opened (permissions, open in another process, ...).
    ConfigError
        ``chunk_bytes`` is not a positive integer.

    Examples
    --------
    >>> with HDF5Store(tmp / "params.h5") as store:                    # doctest: +SKIP
    ...     store.create("dense_0/W", (128, 64), init=lambda a, b: rng.random((b - a, 64)))
    >>> h5py.File(tmp / "params.h5")["dense_0/W"][:2]                  # doctest: +SKIP
    """

    backend = "hdf5"
    persistent = True
    zero_copy = False

    def __init__(self, path, *, read_only: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 verify: bool = True, allow_corrupt: bool = False) -> None:
        super().__init__(read_only=read_only)
        self._durable_init(-1)
        self._closed = True  # until the file is validated; close() is then a no-op
        check_positive_int("chunk_bytes", chunk_bytes)
        self.path = check_path(path)
        self.chunk_bytes = int(chunk_bytes)
        self._file: h5py.File | None = None
        self._paths: dict[str, str] = {}  # key -> HDF5 path of its dataset
        self._infos: dict[str, ParamInfo] = {}
        self._ds: dict[str, h5py.Dataset] = {}  # open datasets (lazily)
        self._written: set[str] = set()  # keys written since the last flush
        self._tls = threading.local()  # per-thread scratch buffer
        self._wlock = threading.Lock()  # one writer at a time (hyperslab spans are read-modify-written)
        self._rawio: _Mover | None = None  # pread/pwrite on the file's fd (None: not a sec2 file)
        self._raw: dict[str, _Param | None] = {}  # key -> its chunk runs, None: served through h5py
        self._real = os.path.realpath(self.path)
        self._registered = False  # in _WRITERS
        self._created = False  # the file was created by this open (removed again if the open fails)
        try:
            self._open_file()
            self._closed = False
            try:
                self._durable_open(self._load_commit(), verify, allow_corrupt)
            finally:
                self._stamp_at_open = None
        except BaseException:
            self._closed = True
            self._close()
            if self._created:  # made by this open and not finished (e.g. the disk filled): leave no trace
                from .files import store_files

                for f in store_files(self.path, "hdf5"):
                    with contextlib.suppress(OSError):
                        f.unlink()
            raise

    # -- opening --------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, action: str):
        """Turn HDF5 failures into StoreIOError naming the file."""
        try:
            yield
        except OocnetError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:  # h5py reports some write failures as ValueError
            if any(m in str(exc).lower() for m in _DAMAGED):
                raise StoreFormatError(f"{self.path} is damaged (truncated or corrupt); HDF5 says: {exc}") from exc
            raise StoreIOError(f"{action} {self.path} failed: {exc}") from exc

    def _open_file(self) -> None:
        p = self.path
        if p.exists():
            if p.is_dir():
                raise StoreError(
                    f"HDF5 store path {p} is a folder; expected a file (a folder selects the memmap backend)."
                )
            with self._guard("reading"):
                is_h5 = h5py.is_hdf5(p)
            if not is_h5:
                raise StoreFormatError(f"{p}: expected an HDF5 file, got a file without the HDF5 signature.")
            mode, new = ("r" if self.read_only else "r+"), False
        else:
            if self.read_only:
                raise StoreError(f"no HDF5 store at {p}: the file does not exist (read_only=True does not create it).")
            record = p.with_name(p.name + ".commit.json")
            if record.exists():  # a store's side files without its data: never start a new store over them
                raise StoreFormatError(
                    f"{p} is missing, but its commit record {record.name} is there: the store's data file was "
                    f"deleted or moved. Restore it; or, to start over, delete the store's remaining files "
                    f"(oocnet.store.remove_store({os.fspath(p)!r}))."
                )
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreIOError(f"creating the folder {p.parent} failed: {exc.strerror or exc}.") from exc
            mode, new = "x", True
        try:
            self._dir_fd_durable = os.open(p.parent, os.O_RDONLY)
        except OSError as exc:
            raise StoreIOError(f"opening the folder {p.parent} failed: {exc.strerror or exc}.") from exc
        if not self.read_only:
            self._lock_fd = acquire_lock(p.with_name(p.name + ".lock"), p)
            with _WRITERS_LOCK:
                if self._real in _WRITERS:
                    raise StoreError(
                        f"HDF5 store {p} is already open for writing in this process; "
                        "close that store first, or open this one with read_only=True."
                    )
                _WRITERS.add(self._real)
                self._registered = True
        try:
            # No chunk cache (see "Memory" in the module docstring).  HDF5's own file lock is
            # off: it would lock readers out too; the store's lock file admits one writer
            # and any number of readers (see oocnet.store.durable).
            # The stamp as the file was before HDF5 opened it for writing (which may touch it):
            # what the commit record is compared with on this open.
            self._stamp_at_open = self._file_stamp(p) if p.exists() else None
            try:
                self._file = self._open_h5(p, mode)
            except OSError as exc:
                # Another writer may have made the file since the check above, which ran before the lock
                # was taken: "exists" is theirs. Any other failure of the exclusive create is this open's.
                self._created = new and exc.errno != errno.EEXIST and "file exists" not in str(exc).lower()
                raise
            self._created = new
        except OSError as exc:
            if "unable to lock file" in str(exc):
                raise StoreIOError(
                    f"HDF5 store {p} is open in another process (HDF5 locks the file); "
                    f"close it there first. ({exc})"
                ) from exc
            if any(m in str(exc).lower() for m in _DAMAGED):
                raise StoreFormatError(f"{p} is damaged (truncated or corrupt); HDF5 says: {exc}") from exc
            raise StoreIOError(f"opening {p} failed: {exc}") from exc
        self._rawio = self._open_raw()
        attrs = self._file.attrs
        if new or ("oocnet_format" not in attrs and len(self._file) == 0 and not self.read_only):
            with self._guard("writing"):
                attrs["oocnet_format"] = FORMAT_NAME
                attrs["oocnet_version"] = FORMAT_VERSION
                self._file.flush()
            self._persist_commit({"generation": 0, "step": 0, "metadata": {}, "time": None, "checksums": {},
                                  "stamps": {}})
            return
        with self._guard("reading"):
            fmt = _as_str(attrs.get("oocnet_format"))
            version = attrs.get("oocnet_version")
        if fmt != FORMAT_NAME:
            got = "no such attribute" if fmt is None else repr(fmt)
            raise StoreFormatError(f"{p}: expected root attribute oocnet_format = {FORMAT_NAME!r}, got {got}.")
        if not _is_int(version) or version < 1:
            raise StoreFormatError(f"{p}: expected root attribute oocnet_version = {FORMAT_VERSION}, got {version!r}.")
        if version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{p}: expected oocnet_version {FORMAT_VERSION} or older, got {int(version)}; "
                "the store was written by a newer oocnet, upgrade to read it."
            )
        with self._guard("reading"):
            self._file.visititems(self._scan)

    @staticmethod
    def _open_h5(p: Path, mode: str) -> h5py.File:
        """``h5py.File(p, mode, rdcc_nbytes=0, locking=False)``, with HDF5's sieve buffer off.

        Rows are also moved by pread/pwrite behind HDF5's back (``_Mover``), so
        HDF5 must keep no copy of raw data: no chunk cache and no sieve buffer
        (a sieve could serve stale bytes, or write them back over newer rows).
        """
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_fapl_sec2()
        cache = list(fapl.get_cache())
        cache[2] = 0  # rdcc_nbytes
        fapl.set_cache(*cache)
        fapl.set_sieve_buf_size(0)
        fapl.set_file_locking(False, ignore_when_disabled=False)
        name = os.fsencode(p)
        if mode == "x":
            fid = h5py.h5f.create(name, h5py.h5f.ACC_EXCL, fapl=fapl)
        else:
            fid = h5py.h5f.open(name, h5py.h5f.ACC_RDONLY if mode == "r" else h5py.h5f.ACC_RDWR, fapl=fapl)
        try:
            return h5py.File(fid)
        finally:
            fid.close()  # the File holds its own reference

    def _open_raw(self) -> _Mover | None:
        """The raw IO handle, if the file is a plain POSIX file without a user block."""
        fid = self._file.id
        try:
            fd = fid.get_vfd_handle()
            plain = (fid.get_access_plist().get_driver() == h5py.h5fd.SEC2
                     and fid.get_create_plist().get_userblock() == 0)
        except (OSError, RuntimeError, ValueError, TypeError):
            return None
        if not plain or not _is_int(fd) or fd < 0 or sys.byteorder != "little":
            return None
        _advise_random(int(fd))  # no readahead, page-sized cache pages (see _advise_random)
        return _Mover(self.path, int(fd))

    def _scan(self, name: str, obj: object) -> None:
        """visititems callback: register each dataset carrying ``oocnet_key``."""
        if not isinstance(obj, h5py.Dataset) or "oocnet_key" not in obj.attrs:
            return
        at = f"{self.path}: dataset /{name}"
        key = _as_str(obj.attrs["oocnet_key"])
        try:
            if not isinstance(key, str):
                raise ConfigError(f"expected a string, got {key!r}")
            validate_key(key)
        except ConfigError as exc:
            raise StoreFormatError(f"{at}: expected attribute oocnet_key to be a parameter key: {exc}") from exc
        if key in self._paths:
            raise StoreFormatError(f"{at}: expected a unique oocnet_key, got {key!r}, also on {self._paths[key]}.")
        shape = obj.shape
        if shape is None or len(shape) == 0 or any(d <= 0 for d in shape):
            raise StoreFormatError(f"{at}: expected a shape with at least one axis and positive sizes, got {shape}.")
        try:
            dtype = validate_dtype(obj.dtype)
        except ConfigError as exc:
            raise StoreFormatError(
                f"{at}: expected dtype float16, float32, float64, int32, int64 or uint8, got {obj.dtype}."
            ) from exc
        crc = obj.attrs.get("crc32")
        if crc is not None and (not _is_int(crc) or not 0 <= crc < 2**32):
            raise StoreFormatError(f"{at}: expected attribute crc32 to be an integer in [0, 2**32), got {crc!r}.")
        self._paths[key] = obj.name
        self._infos[key] = ParamInfo(key, tuple(int(d) for d in shape), dtype)
        if obj.attrs.get("oocnet_lazy") is not None:
            self._lazy_keys.add(key)

    # -- helpers --------------------------------------------------------------------
    def _dataset(self, key: str) -> h5py.Dataset:
        ds = self._ds.get(key)
        if ds is None:
            with self._guard("opening a dataset in"):
                ds = self._ds[key] = self._file[self._paths[key]]
        return ds

    def _raw_layout(self, key: str) -> _Param | None:
        """``key``'s runs of chunks for raw IO (cached), or None where only h5py may move its rows."""
        try:
            return self._raw[key]
        except KeyError:
            pass
        layout = None
        if self._rawio is not None:
            with self._guard("reading"):
                layout = self._probe_layout(self._infos[key], self._dataset(key))
        self._raw[key] = layout
        return layout

    def _probe_layout(self, info: ParamInfo, ds: h5py.Dataset) -> _Param | None:
        """Where ``ds``'s rows lie in the file, if that is fixed and plain; else None.

        Row ``r`` is then at ``offset[r // rpc] + (r % rpc) * row_nbytes`` with
        ``rpc`` rows per chunk: chunked along rows only (whole rows per chunk, so
        a chunk is those rows' C-order bytes), no filters, every chunk allocated
        (allocated unfiltered chunks never move), the host's byte order, and the
        file long enough to hold every chunk (reads past its end would fail
        where HDF5 reads zeros).  Chunks lying back to back are merged into one
        run; the memmap store's op planners see each run as a shard.
        """
        dcpl = ds.id.get_create_plist()
        chunks = ds.chunks
        if (dcpl.get_layout() != h5py.h5d.CHUNKED or chunks is None or tuple(chunks[1:]) != info.row_shape
                or dcpl.get_nfilters() != 0 or np.dtype(ds.dtype) != info.dtype or not info.dtype.isnative):
            return None
        rpc = int(chunks[0])
        n_chunks = -(-info.n_rows // rpc)
        chunk_nbytes = rpc * info.row_nbytes
        offsets = np.full(n_chunks, -1, dtype=np.int64)

        def visit(si) -> bool | None:
            c = si.chunk_offset
            if (si.byte_offset is None or si.filter_mask != 0 or si.size != chunk_nbytes or any(c[1:])
                    or c[0] % rpc or c[0] >= info.n_rows or offsets[c[0] // rpc] >= 0):
                offsets[0] = -2  # not plain: stop
                return True
            offsets[c[0] // rpc] = si.byte_offset
            return None

        if ds.id.get_num_chunks() != n_chunks:  # some chunk is not allocated
            return None
        if hasattr(ds.id, "chunk_iter"):  # HDF5 >= 1.10.10 / 1.12.3: one pass
            ds.id.chunk_iter(visit)
        else:  # pragma: no cover - older HDF5
            for i in range(n_chunks):
                if visit(ds.id.get_chunk_info_by_coord((i * rpc, *(0,) * len(info.row_shape)))):
                    break
        if n_chunks == 0 or offsets.min() < 0:
            return None
        if int(offsets.max()) + chunk_nbytes > os.fstat(self._rawio.fd).st_size:
            return None
        brk = (np.flatnonzero(np.diff(offsets) != chunk_nbytes) + 1).tolist()
        shards = [
            _Shard(self._rawio.name, a * rpc, min(info.n_rows, b * rpc), None, int(offsets[a]))
            for a, b in zip([0, *brk], [*brk, n_chunks])
        ]
        return _Param(info, shards)

    def _scratch(self, info: ParamInfo) -> np.ndarray:
        """This thread's scratch buffer, viewed as rows of ``info``."""
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = np.empty(_SCRATCH_BYTES, dtype=np.uint8)
        n = max(1, _SCRATCH_BYTES // info.row_nbytes)
        if n * info.row_nbytes > buf.size:  # one row is larger than the buffer
            return np.empty((1, *info.row_shape), dtype=info.dtype)
        return buf[: n * info.row_nbytes].view(info.dtype).reshape(n, *info.row_shape)

    @staticmethod
    def _spans(info: ParamInfo, rows: np.ndarray) -> tuple[list[int], list[int]]:
        """Split sorted unique ``rows`` where the gap exceeds _GAP_BYTES.

        Returns index bounds ``first, end`` into ``rows`` of each span.
        """
        gap_rows = _GAP_BYTES // info.row_nbytes
        brk = np.flatnonzero(np.diff(rows) > gap_rows + 1) + 1
        first = np.concatenate(([0], brk)).tolist()
        return first, first[1:] + [int(rows.size)]

    def _crc(self, key: str) -> int:
        """zlib.crc32 of a dataset's values as C-order little-endian bytes, in row chunks."""
        info = self._infos[key]
        scratch = self._scratch(info)
        crc = 0
        for a, b in chunk_rows(info, scratch.nbytes):
            self._read_rows(key, a, b, scratch[: b - a])
            part = scratch[: b - a].astype(info.dtype.newbyteorder("<"), copy=False)
            crc = zlib.crc32(memoryview(part.reshape(-1).view(np.uint8)), crc)
        return crc

    # -- Store hooks ----------------------------------------------------------------
    def _keys(self) -> list[str]:
        return list(self._paths)

    def _has(self, key: str) -> bool:
        return key in self._paths

    def _info(self, key: str) -> ParamInfo:
        return self._infos[key]

    def _read_rows(self, key, start, stop, out):
        p = self._raw_layout(key)
        if p is not None:
            self._rawio.read(self._rawio._range_ops(p, start, stop, piece=_PIECE_BYTES), out)
            return
        with self._guard("reading"):
            _Hyperslab(self._dataset(key), out).read(start, 0, stop - start)

    def _read_index(self, key, rows, out):
        p = self._raw_layout(key)
        if p is not None:
            if rows.size:
                self._rawio._read_scattered(p, rows, out)
            return
        info = self._infos[key]
        with self._guard("reading"):
            direct = _Hyperslab(self._dataset(key), out)
            via = None
            for i, j in zip(*self._spans(info, rows)):
                a, b = int(rows[i]), int(rows[j - 1]) + 1
                if b - a == j - i:  # a contiguous run: straight into out
                    direct.read(a, i, j - i)
                    continue
                if via is None:
                    via = _Hyperslab(self._dataset(key), self._scratch(info))
                k = i
                while k < j:  # the span with its gaps, a scratch-full at a time
                    a = int(rows[k])
                    stop = min(b, a + via.arr.shape[0])
                    kk = i + int(np.searchsorted(rows[i:j], stop))
                    via.read(a, 0, stop - a)
                    np.take(via.arr, rows[k:kk] - a, axis=0, out=out[k:kk])
                    k = kk

    def _write_rows(self, key, start, value):
        p = self._raw_layout(key)
        with self._wlock, self._guard("writing"):
            self._written.add(key)
            if p is not None:
                self._rawio.write(self._rawio._range_ops(p, start, start + value.shape[0]), value)
                return
            _Hyperslab(self._dataset(key), value).write(0, start, value.shape[0])

    def _write_index(self, key, rows, value):
        info = self._infos[key]
        p = self._raw_layout(key)
        with self._wlock, self._guard("writing"):
            self._written.add(key)
            if p is not None:  # exact runs: no read-modify-write of the gaps
                if rows.size:
                    self._rawio._write_runs(p, rows, value)
                return
            direct = _Hyperslab(self._dataset(key), value)
            via = None
            for i, j in zip(*self._spans(info, rows)):
                a, b = int(rows[i]), int(rows[j - 1]) + 1
                if b - a == j - i:
                    direct.write(i, a, j - i)
                    continue
                if via is None:
                    via = _Hyperslab(self._dataset(key), self._scratch(info))
                k = i
                while k < j:  # read the span, patch the rows, write it back
                    a = int(rows[k])
                    stop = min(b, a + via.arr.shape[0])
                    kk = i + int(np.searchsorted(rows[i:j], stop))
                    via.read(a, 0, stop - a)
                    via.arr[rows[k:kk] - a] = value[k:kk]
                    via.write(0, a, stop - a)
                    k = kk

    def _create(self, info: ParamInfo, init: RowInitializer | None) -> None:
        path = _h5_path(info.key)
        f = self._file
        created_root = None  # outermost group created for this dataset, removed on failure
        prefix = ""
        for comp in path.strip("/").split("/")[:-1]:
            prefix += "/" + comp
            obj = f.get(prefix)
            if isinstance(obj, h5py.Dataset):
                raise ConfigError(
                    f"cannot create {info.key!r}: HDF5 path {prefix!r} is a dataset, so it cannot hold "
                    f"{info.key!r} (in HDF5 no key may be a '/'-prefix of another)."
                )
            if obj is None and created_root is None:
                created_root = prefix
        if created_root is None and path in f:
            raise ConfigError(
                f"cannot create {info.key!r}: HDF5 path {path!r} is already taken by "
                f"{'a group' if isinstance(f.get(path), h5py.Group) else 'an object'} "
                "(in HDF5 no key may be a '/'-prefix of another)."
            )
        check_disk_room(info, self.path.parent)  # early allocation writes every chunk at creation
        rows_per_chunk = min(info.n_rows, max(1, self.chunk_bytes // info.row_nbytes))
        if rows_per_chunk * info.row_nbytes > _MAX_CHUNK_BYTES:
            raise ConfigError(
                f"rows of {info.key!r} are {info.row_nbytes} bytes; HDF5 chunks must be under 4 GiB, "
                "so a row may not exceed that."
            )
        try:
            with self._wlock:
                with self._guard("creating a dataset in"):
                    # Early allocation and no timestamps: after creation, row writes touch raw
                    # chunk data only, never HDF5 metadata, so a crash mid-write cannot damage
                    # the file's structure (the journal restores the rows).
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                    # Zeros: not written by HDF5 (in large writes, which also left the file in
                    # large cached pages) but made by _zero_fill below.
                    unfilled = init is None and self._rawio is not None
                    if unfilled:
                        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                    ds = f.create_dataset(
                        path,
                        shape=info.shape,
                        dtype=info.dtype.newbyteorder("<"),
                        chunks=(rows_per_chunk, *info.row_shape),
                        fillvalue=np.zeros((), dtype=info.dtype),
                        track_times=False,
                        dcpl=dcpl,
                    )
                    ds.attrs["oocnet_key"] = info.key
                    if unfilled:
                        self._file.flush()  # the file now spans the new chunks
                    layout = None if self._rawio is None else self._probe_layout(info, ds)
                if unfilled:
                    self._zero_fill(info, ds, layout)
                if init is not None:
                    for a, b in chunk_rows(info):  # ~16 MiB of rows in RAM at a time
                        value = init(a, b)  # the caller's errors propagate unwrapped
                        with self._guard("writing"):
                            if layout is not None:
                                self._rawio.write(self._rawio._range_ops(layout, a, b), value)
                            else:
                                _Hyperslab(ds, value).write(0, a, b - a)
                if layout is not None and info.nbytes >= _UNCACHE_MIN_BYTES:
                    self._uncache(info, layout)
        except BaseException:
            # Leave no trace: the file is as it was before create() was called.
            with contextlib.suppress(Exception):
                doomed = created_root or path
                if doomed in f:
                    del f[doomed]
            raise
        self._paths[info.key] = ds.name
        self._infos[info.key] = info
        self._ds[info.key] = ds
        self._raw[info.key] = layout
        self._written.add(info.key)  # its checksum is recorded at the next flush

    def _zero_fill(self, info: ParamInfo, ds, layout: _Param | None) -> None:
        """Make a dataset created without a fill value read as zeros.

        Its chunks' byte ranges are zeroed with ``fallocate`` (unwritten extents or holes:
        nothing is written, and a later row write needs no read from the disk); where
        the OS cannot, zeros are written -- page by page through the raw path, so that
        the kernel caches them in single pages.
        """
        with self._guard("zeroing"):
            if layout is not None:
                fd = self._rawio.fd
                if all(zero_region(fd, sh.offset, (sh.stop - sh.start) * info.row_nbytes) for sh in layout.shards):
                    return
            for a, b in chunk_rows(info):
                value = np.zeros((b - a, *info.row_shape), dtype=info.dtype)
                if layout is not None:
                    self._rawio.write(self._rawio._range_ops(layout, a, b), value)
                else:
                    _Hyperslab(ds, value).write(0, a, b - a)

    def _uncache(self, info: ParamInfo, layout: _Param) -> None:
        """Drop a new dataset's pages from the page cache, so that they come back page-sized.

        HDF5's fill and the initial values are written in big pieces, which the
        kernel caches as large folios; a row written later into a clean large
        folio dirties all of it (see :func:`~oocnet.store.memmap._advise_random`;
        measured: 2000 random 512-byte rows dirtied 94 MB instead of 8 MB).
        Dirty pages cannot be dropped, hence the fsync.  Pages read back later
        (the next commit's checksums, rows) are cached page-sized because the
        file is advised FADV_RANDOM.
        """
        if not hasattr(os, "posix_fadvise"):  # pragma: no cover - non-Linux
            return
        fd = self._rawio.fd
        with self._guard("syncing"):
            self._file.flush()
            os.fsync(fd)
            for s in layout.shards:
                os.posix_fadvise(fd, s.offset, (s.stop - s.start) * info.row_nbytes, os.POSIX_FADV_DONTNEED)

    def _delete(self, key):
        path = self._paths[key]
        self._lazy_keys.discard(key)
        with self._wlock, self._guard("deleting a dataset in"):
            self._ds.pop(key, None)
            self._raw.pop(key, None)  # HDF5 may give its chunks' space to a later dataset
            del self._file[path]
            parent = posixpath.dirname(path)
            while parent not in ("/", ""):  # drop groups that existed only for this key
                group = self._file[parent]
                if len(group) or len(group.attrs):
                    break
                del self._file[parent]
                parent = posixpath.dirname(parent)
        del self._paths[key], self._infos[key]
        self._written.discard(key)

    def _flush(self) -> None:
        with self._wlock, self._guard("flushing"):
            self._file.flush()  # HDF5's buffers -> the OS

    def _sync_data(self) -> None:
        with self._wlock, self._guard("syncing"):
            self._file.flush()
            try:
                os.fsync(self._file.id.get_vfd_handle())  # the OS -> the disk
            except (OSError, ValueError, TypeError):
                pass  # a driver without a POSIX fd (e.g. in-memory); nothing to sync
            self._written.clear()
            if self._rawio is not None:
                self._rawio._written.clear()

    # -- durability hooks (see oocnet.store.durable) ------------------------------------
    def _sidecar(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _lazy_place(self) -> tuple[Path, str]:
        return self.path.parent, lazy_prefix(self.path)

    def _mark_lazy(self, key: str) -> None:
        with self._wlock, self._guard("marking a dataset in"):
            self._dataset(key).attrs["oocnet_lazy"] = 1
        super()._mark_lazy(key)

    def _journal_path(self) -> Path:
        return self._sidecar(".journal")

    def _blocks(self, key: str) -> np.ndarray:
        return np.zeros(1, dtype=np.int64)  # one checksum per dataset

    def _block_label(self, key: str, i: int) -> str:
        return self._paths[key]

    def _block_files(self, key: str) -> list[Path]:
        return [self.path]

    def _file_stamp(self, path: Path) -> list[int]:
        if path == self.path and getattr(self, "_stamp_at_open", None) is not None:
            return list(self._stamp_at_open)
        return super()._file_stamp(path)

    def _restamp(self) -> None:
        """Record the file's current size and mtime in the commit record (the data is the committed data)."""
        doc = self._load_commit()
        if not doc or doc.get("generation") != self._commit["generation"]:
            return
        stamp = self._file_stamp(self.path)
        stamps = doc.setdefault("stamps", {})
        if stamps.get(self.path.name) == stamp:
            return
        stamps[self.path.name] = stamp
        self._persist_commit({k: v for k, v in doc.items() if k not in ("format", "version")})
        self._stamps = dict(stamps)

    def _load_commit(self) -> dict | None:
        path = self._sidecar(".commit.json")
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_bytes())
        except OSError as exc:
            raise StoreIOError(f"reading {path} failed: {exc.strerror or exc}.") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreFormatError(f"{path}: expected a JSON object, got invalid JSON ({exc}).") from exc
        if not isinstance(doc, dict) or doc.get("format") != COMMIT_FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise StoreFormatError(f"{path}: expected format {COMMIT_FORMAT!r}, got {got!r}.")
        version = doc.get("version")
        if not _is_int(version) or version < 1:
            raise StoreFormatError(f"{path}: expected version {FORMAT_VERSION}, got {version!r}.")
        if version > FORMAT_VERSION:
            raise StoreFormatError(f"{path}: expected version {FORMAT_VERSION} or older, got {version}; "
                                   "the store was written by a newer oocnet, upgrade to read it.")
        check_seal(str(path), doc)
        for fld in ("generation", "step"):
            if not _is_int(doc.get(fld)) or doc[fld] < 0:
                raise StoreFormatError(f"{path}: expected {fld} to be an integer >= 0, got {doc.get(fld)!r}.")
        if not isinstance(doc.get("checksums"), dict) or not isinstance(doc.get("metadata", {}), dict):
            raise StoreFormatError(f"{path}: expected 'checksums' and 'metadata' to be objects.")
        return doc

    def _commit_record_path(self) -> Path:
        return self._sidecar(".commit.json")

    def _read_commit(self) -> dict:
        return self._load_commit() or {}

    def _persist_commit(self, record: dict) -> None:
        doc = sealed({"format": COMMIT_FORMAT, "version": FORMAT_VERSION, **record})
        write_atomic(self._sidecar(".commit.json"), json.dumps(doc, indent=1).encode("ascii"), self._dir_fd_durable)

    def _drop_params(self, keys: list[str]) -> None:
        for key in keys:
            if key in self._paths:
                self._delete(key)


    def _close(self) -> None:
        # At a commit (nothing since, nothing failed) the file's bytes are the committed ones, but
        # HDF5's own bookkeeping on close changes its size/mtime stamp -- which would make every
        # later open verify (read) the whole file. So such a close stamps the record afresh.
        try:
            at_commit = (not self.read_only and not self._failed and self._file is not None
                         and not self.has_uncommitted())
        except AttributeError:  # closed while still opening
            at_commit = False
        if self._rawio is not None:
            self._rawio.close()  # its IO threads first: they use the file's fd
            self._rawio = None
        self._raw.clear()
        self._ds.clear()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if at_commit:
            with contextlib.suppress(Exception):  # at worst the next open verifies the checksums
                self._restamp()
        self._durable_close()  # the lock goes last
        if self._dir_fd_durable >= 0:
            os.close(self._dir_fd_durable)
            self._dir_fd_durable = -1
        if self._registered:
            with _WRITERS_LOCK:
                _WRITERS.discard(self._real)
            self._registered = False

    # -- extras ---------------------------------------------------------------------
    def dataset_path(self, key: str) -> str:
        """The HDF5 path of ``key``'s dataset (e.g. ``"/dense_0/W"``)."""
        self._checked_info(key)
        return self._paths[key]

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" at {str(self.path)!r}>"
