"""The parameter-store interface every backend implements.

A store holds named n-dimensional arrays ("parameters", including optimizer
state) and moves *rows* (slices along axis 0) between them and RAM.  It knows
nothing of layers or models: keys are opaque strings such as ``"dense_0/W"`` or
``"dense_0/W:adagrad"``.

Public methods validate their arguments and then call one ``_``-prefixed hook
that a backend implements; validation therefore lives in one place and every
backend raises the same errors for the same mistakes.

Reads come in three forms, each optionally into a buffer the caller owns
(``out=``), so that the pager can reuse memory instead of allocating per step:

* ``read(key)`` -- the whole parameter;
* ``read_rows(key, start, stop)`` -- a contiguous row range;
* ``read_index(key, rows)`` -- an arbitrary set of rows, in the order given
  (duplicates allowed).

Writes mirror them.  ``write_index`` refuses duplicate row ids: which value
would win is undefined, so the caller must combine duplicates first.

Capability flags (class attributes) say how backends differ:

``persistent``
    parameters survive :meth:`close` and can be reopened.
``zero_copy``
    :meth:`view_rows` returns a live view into the storage, so the pager need
    not copy (the in-RAM backend).
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import operator
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np

from .rowinit import LazyRows, RowInit
from ..errors import (
    ConfigError,
    ParameterExists,
    ParameterNotFound,
    ReadOnlyError,
    ShapeError,
    StoreClosedError,
    StoreError,
)

#: ``init(start, stop) -> ndarray`` of shape ``(stop - start, *shape[1:])``: the
#: initial values of rows ``[start, stop)``.  Called in row chunks, so a
#: parameter larger than RAM can be created.
RowInitializer = Callable[[int, int], np.ndarray]

#: Rows are initialised and copied in chunks of about this many bytes.
CHUNK_BYTES = 16 * 2**20

_SUPPORTED_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8")


@dataclass(frozen=True)
class ParamInfo:
    """Shape and dtype of one stored parameter.

    Attributes
    ----------
    key : str
        The parameter's name in the store.
    shape : tuple of int
        Its shape; axis 0 is the row axis that reads and writes slice.
    dtype : numpy.dtype
        Its element type.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def n_rows(self) -> int:
        """Number of rows (``shape[0]``)."""
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (``shape[1:]``)."""
        return self.shape[1:]

    @property
    def row_nbytes(self) -> int:
        """Bytes in one row."""
        return int(math.prod(self.shape[1:])) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes in the whole parameter."""
        return self.n_rows * self.row_nbytes


def chunk_rows(info: ParamInfo, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` row ranges of about ``chunk_bytes`` covering ``info``."""
    step = max(1, chunk_bytes // max(1, info.row_nbytes))
    for start in range(0, info.n_rows, step):
        yield start, min(info.n_rows, start + step)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive integer (not a bool), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_path(path: object) -> Path:
    """Return ``path`` as a :class:`pathlib.Path`, else raise ConfigError."""
    try:
        return Path(os.fspath(path))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"path must be a str or os.PathLike, got {type(path).__name__}.") from exc


def validate_key(key: object) -> str:
    """Return ``key`` if it is a usable parameter name, else raise ConfigError."""
    if not isinstance(key, str) or not key or key.strip() != key or "\x00" in key:
        raise ConfigError(
            f"parameter key must be a non-empty string without surrounding spaces, got {key!r}."
        )
    if key.startswith("/") or key.endswith("/") or "//" in key:
        raise ConfigError(f"parameter key must not start or end with '/' or contain '//', got {key!r}.")
    return key


def validate_dtype(dtype: object) -> np.dtype:
    """Return ``dtype`` as a numpy dtype if a store can hold it, else raise ConfigError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype must be one of {', '.join(_SUPPORTED_DTYPES)}, got {dtype!r}.") from exc
    if dt.name not in _SUPPORTED_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_SUPPORTED_DTYPES)}, got {dt.name}.")
    return dt.newbyteorder("=")


def validate_shape(shape: object) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints (at least one axis), else raise ShapeError."""
    try:
        dims = tuple(operator.index(d) for d in shape)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ShapeError(f"shape must be a tuple of positive integers, got {shape!r}.") from exc
    if not dims or any(d <= 0 for d in dims):
        raise ShapeError(f"shape must have at least one axis and positive sizes, got {shape!r}.")
    if math.prod(dims) >= 2**56:  # 64 PiB of bytes: no store holds it (numpy's limit is near, too)
        raise ShapeError(f"shape {dims} has {math.prod(dims):.3g} elements; no store can hold that many.")
    return dims


def format_bytes(n: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'``; None -> ``'unlimited'``."""
    if n is None:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_disk_room(info: "ParamInfo", folder) -> None:
    """Refuse, before anything is written, a parameter whose bytes ``folder``'s filesystem cannot hold."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # unknown: the write itself will say
    free = st.f_bavail * st.f_frsize
    if info.nbytes > free:
        from ..errors import StoreIOError

        raise StoreIOError(f"parameter {info.key!r} needs {format_bytes(info.nbytes)} on disk, but {folder} has "
                           f"{format_bytes(free)} free.")


class Store(abc.ABC):
    """Abstract base of parameter stores (in RAM, memmap shards, HDF5).

    Use a store as a context manager, or call :meth:`close` when done.

    Parameters
    ----------
    read_only : bool
        Refuse every write with :class:`~oocnet.errors.ReadOnlyError`.
    """

    backend: ClassVar[str] = "abstract"
    persistent: ClassVar[bool] = False
    zero_copy: ClassVar[bool] = False
    #: Whether a parameter created with a :class:`~oocnet.store.rowinit.RowInit` is created
    #: *lazily*: nothing is written, and rows not written since read as their computed
    #: initial values (disk stores; they record which rows were written).
    lazy_init: ClassVar[bool] = False
    #: Keys deleted since the last commit whose files stay until the commit (durable stores).
    _pending_delete: frozenset | set = frozenset()

    def __init__(self, *, read_only: bool = False) -> None:
        self.read_only = bool(read_only)
        self._closed = False
        self._failed = False  # a data write failed since the last commit: never commit on top of it
        self._pid = os.getpid()  # a forked child must not write (or commit) its parent's store
        self._pagers: weakref.WeakSet = weakref.WeakSet()  # pagers paging this store (their dirty blocks)
        self._lazy: dict[str, LazyRows] = {}  # parameters created lazily, and which rows were written

    # -- what a backend implements --------------------------------------------------
    @abc.abstractmethod
    def _create(self, info: ParamInfo, init: RowInitializer | None) -> None:
        """Allocate ``info`` and fill it (zeros when ``init`` is None)."""

    @abc.abstractmethod
    def _keys(self) -> list[str]: ...

    @abc.abstractmethod
    def _info(self, key: str) -> ParamInfo: ...

    @abc.abstractmethod
    def _read_rows(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy rows ``[start, stop)`` into ``out`` (already validated)."""

    @abc.abstractmethod
    def _read_index(self, key: str, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy the rows ``rows`` (sorted, unique) into ``out``."""

    @abc.abstractmethod
    def _write_rows(self, key: str, start: int, value: np.ndarray) -> None:
        """Overwrite rows ``[start, start + len(value))``."""

    @abc.abstractmethod
    def _write_index(self, key: str, rows: np.ndarray, value: np.ndarray) -> None:
        """Overwrite the rows ``rows`` (sorted, unique) with ``value``."""

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    def _flush(self) -> None:
        """Push buffered writes to the OS (no-op in RAM)."""

    def _before_write(self, key: str, ids: np.ndarray) -> None:
        """Called with the sorted row ids about to be overwritten (durable stores journal them)."""

    def _after_create(self, key: str) -> None:
        """Called after a parameter was created."""

    def _patch_read(self, key: str, start: int, stop: int, ids: np.ndarray | None, out: np.ndarray) -> None:
        """Called after rows were read into ``out`` (rows [start, stop), or the sorted ``ids``)."""

    def has_uncommitted(self) -> bool:
        """Whether anything was written since the last commit (always False in RAM)."""
        return False

    def _close(self) -> None:
        """Release files and handles."""

    # -- guards ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{type(self).__name__} is closed; reopen it with oocnet.open_store().")
        if self._pid != os.getpid():
            raise StoreError(f"this {type(self).__name__} was opened by process {self._pid}, before a fork; "
                             f"open the store again in this process (read_only=True while the parent writes).")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"{type(self).__name__} was opened read-only; open it with read_only=False to write.")

    def _live_keys(self):
        """The keys a user sees: the backend's, less those deleted since the last commit."""
        keys = self._keys()
        return [k for k in keys if k not in self._pending_delete] if self._pending_delete else keys

    def _has(self, key: str) -> bool:
        """Whether the backend holds ``key`` (backends answer from a dict: every read and write asks)."""
        return key in self._keys()

    def _checked_info(self, key: str) -> ParamInfo:
        self._check_open()
        if not isinstance(key, str) or not self._has(key) or key in self._pending_delete:
            raise ParameterNotFound(
                f"no parameter {key!r} in the store; it holds {sorted(self._live_keys())!r}."
            )
        return self._info(key)

    @staticmethod
    def _check_out(info: ParamInfo, n: int, out: np.ndarray | None, what: str) -> np.ndarray:
        shape = (n, *info.row_shape)
        if out is None:
            return np.empty(shape, dtype=info.dtype)
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != info.dtype:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ShapeError(f"out for {what} of {info.key!r} must be a {shape} {info.dtype} array, got {got}.")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ShapeError(f"out for {what} of {info.key!r} must be C-contiguous and writeable.")
        return out

    @staticmethod
    def _check_range(info: ParamInfo, start: object, stop: object) -> tuple[int, int]:
        try:
            a, b = operator.index(start), operator.index(stop)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"row range of {info.key!r} must be integers, got {start!r}:{stop!r}.") from exc
        if not 0 <= a <= b <= info.n_rows:
            raise ShapeError(f"row range of {info.key!r} must lie in [0, {info.n_rows}], got [{a}, {b}).")
        return a, b

    @staticmethod
    def _check_rows(info: ParamInfo, rows: object) -> np.ndarray:
        arr = np.asarray(rows)
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise ConfigError(
                f"row ids of {info.key!r} must be a 1-D integer array, got {arr.dtype} with shape {arr.shape}."
            )
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= info.n_rows):
            raise ShapeError(
                f"row ids of {info.key!r} must lie in [0, {info.n_rows}), got ids in [{arr.min()}, {arr.max()}]."
            )
        return arr

    @staticmethod
    def _check_value(info: ParamInfo, value: object, n: int, what: str) -> np.ndarray:
        arr = np.asarray(value)
        shape = (n, *info.row_shape)
        if arr.shape != shape:
            raise ShapeError(f"value for {what} of {info.key!r} must have shape {shape}, got {arr.shape}.")
        if arr.dtype != info.dtype:
            if not np.can_cast(arr.dtype, info.dtype, casting="same_kind"):
                raise ShapeError(f"value for {what} of {info.key!r} must be {info.dtype}, got {arr.dtype}.")
            arr = arr.astype(info.dtype)
        return np.ascontiguousarray(arr)

    @property
    def failed(self) -> bool:
        """True when a write failed (or :meth:`mark_failed` was called) since the last commit."""
        return self._failed

    def mark_failed(self) -> None:
        """Forbid committing what was written since the last commit (a caller's step failed half-way).

        :meth:`close` then leaves the changes uncommitted, and the next open of a
        disk store rolls them back.
        """
        self._failed = True

    @contextlib.contextmanager
    def _poison_on_error(self):
        """A write that fails part-way may leave rows half-written: no commit may follow it."""
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    # -- public interface --------------------------------------------------------------
    def create(self, key: str, shape, dtype="float32", init: RowInitializer | np.ndarray | None = None) -> ParamInfo:
        """Create a parameter and fill it.

        Parameters
        ----------
        key : str
            Its name; must not exist yet.
        shape : tuple of int
            At least one axis; axis 0 is the row axis.
        dtype : str or numpy.dtype
            One of float16, float32, float64, int32, int64, uint8.
        init : callable, ndarray or None
            ``init(start, stop)`` returning rows ``[start, stop)``, called in chunks of
            about 16 MiB; or a whole array of ``shape``; or None for zeros.  A
            :class:`~oocnet.store.rowinit.RowInit` given to a disk store writes
            nothing: each row reads as its initial value until it is first written,
            so creating a table of 10^7 rows takes a fraction of a second (its disk
            blocks are allocated, not written).

        Returns
        -------
        ParamInfo
        """
        self._check_writable()
        info = ParamInfo(validate_key(key), validate_shape(shape), validate_dtype(dtype))
        if key in self._pending_delete:
            raise ParameterExists(f"parameter {key!r} was deleted since the last commit and its committed data "
                                  f"is kept until the next one; commit() before creating it again.")
        if key in self._keys():
            raise ParameterExists(f"parameter {key!r} already exists with shape {self._info(key).shape}.")
        if isinstance(init, RowInit) and self.lazy_init:
            if init.shape != info.shape or init.dtype != info.dtype:
                raise ShapeError(f"initializer of {key!r} is for {init.shape} {init.dtype}, "
                                 f"not {info.shape} {info.dtype}.")
            self._create(info, None)  # zeros: a row not written reads as its initial value
            self._lazy[info.key] = LazyRows(init, info.n_rows)
            self._after_create(info.key)
            return info
        self._lazy.pop(info.key, None)  # from a parameter of that name deleted since the last commit
        if isinstance(init, np.ndarray) or (init is not None and not callable(init)):
            whole = self._check_value(info, init, info.n_rows, "create")
            init = lambda a, b: whole[a:b]  # noqa: E731
        checked = None
        if init is not None:
            user_init = init

            def checked(a: int, b: int) -> np.ndarray:
                return self._check_value(info, user_init(a, b), b - a, "init")

        self._create(info, checked)
        self._after_create(info.key)
        return info

    def rows_written(self, key: str) -> int | None:
        """How many rows of a lazily created parameter have been written; None if it was not created lazily.

        The other rows read as their computed initial values (see :meth:`create`).
        """
        self._checked_info(key)
        lazy = self._lazy.get(key)
        return None if lazy is None else lazy.n_written

    def keys(self) -> list[str]:
        """Sorted list of parameter keys."""
        self._check_open()
        return sorted(self._live_keys())

    def __contains__(self, key: object) -> bool:
        self._check_open()
        return isinstance(key, str) and self._has(key) and key not in self._pending_delete

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def info(self, key: str) -> ParamInfo:
        """Shape and dtype of ``key``."""
        return self._checked_info(key)

    def read(self, key: str, out: np.ndarray | None = None) -> np.ndarray:
        """Read a whole parameter (into ``out`` when given) and return it."""
        info = self._checked_info(key)
        out = self._check_out(info, info.n_rows, out, "read")
        self._read_range(key, 0, info.n_rows, out)
        return out

    def read_rows(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read rows ``[start, stop)`` of ``key`` (into ``out`` when given) and return them."""
        info = self._checked_info(key)
        a, b = self._check_range(info, start, stop)
        out = self._check_out(info, b - a, out, "read_rows")
        if b > a:
            self._read_range(key, a, b, out)
        return out

    def read_index(self, key: str, rows, out: np.ndarray | None = None) -> np.ndarray:
        """Read the rows ``rows`` of ``key``, in the order given (duplicates allowed).

        The backend reads each distinct row once, in ascending order.
        """
        info = self._checked_info(key)
        ids = self._check_rows(info, rows)
        out = self._check_out(info, ids.size, out, "read_index")
        if ids.size == 0:
            return out
        if ids.size == 1 or np.all(ids[1:] > ids[:-1]):
            self._read_set(key, ids, out)
        else:
            uniq, inverse = np.unique(ids, return_inverse=True)
            tmp = np.empty((uniq.size, *info.row_shape), dtype=info.dtype)
            self._read_set(key, uniq, tmp)
            np.take(tmp, inverse, axis=0, out=out)
        return out

    def _read_range(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``[start, stop)`` into ``out``: the backend's bytes, as a reader sees them, lazy rows computed."""
        self._read_rows(key, start, stop, out)
        self._patch_read(key, start, stop, None, out)
        lazy = self._lazy.get(key)
        if lazy is not None and not lazy.complete:
            fresh = lazy.unwritten_in(start, stop)
            if fresh.size:
                out[fresh] = lazy.init.at(fresh + start)

    def _written_rows(self, key: str, ids: np.ndarray) -> np.ndarray | None:
        """Which rows ``ids`` of ``key`` were written (bool each); None when all were (not a lazy table,
        or a complete one): then the backend holds every row's value."""
        lazy = self._lazy.get(key)
        return None if lazy is None or lazy.complete else lazy.written(ids)

    def _read_set(self, key: str, ids: np.ndarray, out: np.ndarray) -> None:
        """Rows ``ids`` (sorted, unique) into ``out``; rows never written are computed, not read."""
        written = self._written_rows(key, ids)
        if written is None or written.all():
            self._read_index(key, ids, out)
            self._patch_read(key, 0, 0, ids, out)
            return
        some = ids[written]
        tmp = np.empty((some.size, *out.shape[1:]), dtype=out.dtype)
        if some.size:
            self._read_index(key, some, tmp)
        self._patch_read(key, 0, 0, some, tmp)  # with no row on disk too: a reader checks for a commit
        out[written] = tmp
        fresh = ~written
        out[fresh] = self._lazy[key].init.at(ids[fresh])

    def write(self, key: str, value) -> None:
        """Overwrite a whole parameter."""
        self._check_writable()
        info = self._checked_info(key)
        arr = self._check_value(info, value, info.n_rows, "write")
        self._before_write(key, np.arange(info.n_rows, dtype=np.int64))
        with self._poison_on_error():  # the bitmap too: rows written but not marked would be lost
            self._write_rows(key, 0, arr)
            if key in self._lazy:
                self._lazy[key].mark_range(0, info.n_rows)

    def write_rows(self, key: str, start: int, value) -> None:
        """Overwrite rows ``[start, start + len(value))`` of ``key``."""
        self._check_writable()
        info = self._checked_info(key)
        n = np.shape(value)[0] if np.ndim(value) else -1
        a, _ = self._check_range(info, start, start)  # a non-integer start is a ConfigError, not a TypeError
        a, b = self._check_range(info, a, a + max(n, 0))
        arr = self._check_value(info, value, b - a, "write_rows")
        if b > a:
            self._before_write(key, np.arange(a, b, dtype=np.int64))
            with self._poison_on_error():
                self._write_rows(key, a, arr)
                if key in self._lazy:
                    self._lazy[key].mark_range(a, b)

    def write_index(self, key: str, rows, value) -> None:
        """Overwrite the rows ``rows`` of ``key`` (any order; duplicates are refused)."""
        self._check_writable()
        info = self._checked_info(key)
        ids = self._check_rows(info, rows)
        arr = self._check_value(info, value, ids.size, "write_index")
        if ids.size == 0:
            return
        if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):  # the pager's rows are already sorted
            order = np.argsort(ids, kind="stable")
            ids = ids[order]
            if np.any(ids[1:] == ids[:-1]):
                raise ConfigError(f"row ids written to {key!r} must be unique; combine duplicate rows first.")
            arr = arr[order]
        self._before_write(key, ids)
        with self._poison_on_error():
            self._write_index(key, ids, arr)
            if key in self._lazy:
                self._lazy[key].mark(ids)

    def delete(self, key: str) -> None:
        """Remove a parameter."""
        self._check_writable()
        self._checked_info(key)
        self._delete(key)

    def view_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """A live, writeable view of rows ``[start, stop)`` (only where ``zero_copy``)."""
        raise NotImplementedError(f"{type(self).__name__} does not hand out views (zero_copy is False).")

    @staticmethod
    def _check_commit_args(step, metadata) -> None:
        """A commit's ``step`` is an int >= 0; its ``metadata`` a dict that JSON keeps as it is."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
            raise ConfigError(f"commit step must be an integer >= 0 (or None), got {step!r}.")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise ConfigError(f"commit metadata must be a dict, got {type(metadata).__name__}.")
            try:
                same = json.loads(json.dumps(metadata, allow_nan=False)) == metadata
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"commit metadata must be JSON-serialisable, got {metadata!r}: {exc}.") from exc
            if not same:
                raise ConfigError(f"commit metadata must read back unchanged from JSON (string keys, lists not "
                                  f"tuples), got {metadata!r}.")

    def commit(self, step: int | None = None, metadata: dict | None = None) -> dict:
        """Make everything written so far durable as one commit; return its record.

        In RAM this only records ``step`` and ``metadata``; disk stores implement
        the journaled protocol of :mod:`oocnet.store.durable`.
        """
        self._check_writable()
        self._check_commit_args(step, metadata)
        prev = getattr(self, "_mem_commit", {"generation": 0, "step": 0, "metadata": {}, "time": None})
        self._mem_commit = {"generation": prev["generation"] + 1,
                            "step": prev["step"] if step is None else int(step),
                            "metadata": metadata or {}, "time": None}
        return dict(self._mem_commit)

    @property
    def last_commit(self) -> dict:
        """The last commit's ``generation``, ``step``, ``metadata`` and ``time``."""
        return dict(getattr(self, "_mem_commit", {"generation": 0, "step": 0, "metadata": {}, "time": None}))

    def flush(self) -> None:
        """Write buffered data through to the backing files (durability is :meth:`commit`'s job)."""
        self._check_open()
        if not self.read_only:
            self._flush()

    def __del__(self) -> None:
        # Dropped without close(): release files and the writer lock (so the path can be opened
        # again in this process), but commit nothing -- as after a crash, the next open rolls back
        # to the last commit.
        try:
            if not self._closed and self._pid == os.getpid():
                self._failed = True
                self._closed = True
                self._close()
        except Exception:  # noqa: BLE001 - at interpreter exit modules may be half torn down
            pass

    def close(self) -> None:
        """Commit what was written since the last commit, and release the store. Idempotent.

        Later calls raise StoreClosedError.
        """
        if self._closed:
            return
        if self._pid != os.getpid():  # a forked child: the parent's store is not ours to commit or release
            self._closed = True
            return
        live = [p for p in self._pagers if not p._closed]
        under_a_model = bool(live) and not self.read_only and (self.has_uncommitted() or any(p.dirty for p in live))
        try:
            if under_a_model:  # the model's work since its last commit is not a state to commit
                self._failed = True
            for pager in live:
                pager.close(flush=False)
            if not self.read_only:
                self._flush()
                if self.has_uncommitted() and not self._failed:
                    self.commit()  # a clean close keeps what was written
        finally:
            self._closed = True
            self._close()
        if under_a_model:
            raise StoreError(
                f"{type(self).__name__} was closed under a model that had changed it since its last commit; "
                f"those changes were not committed (close the model, or commit it, before its store)."
            )

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def nbytes(self) -> int:
        """Total bytes of all parameters."""
        return sum(self._info(k).nbytes for k in self.keys())

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __array__(self, *args, **kwargs):  # no silent whole-store reads
        raise TypeError("a Store is not an array; read a parameter with store.read(key).")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._live_keys())} parameters"
        return f"<{type(self).__name__} {state}{' read-only' if self.read_only else ''}>"
