"""Commits, the rollback journal, checksums and the writer lock, shared by the disk backends.

The protocol (see :mod:`oocnet.store.journal` for the journal's bytes)
======================================================================
A store's state on disk is its data files plus a *commit record* (memmap: the
``commit`` section of ``manifest.json``; HDF5: the ``<file>.commit.json``
sidecar), replaced atomically (write a temp file, fsync, rename, fsync the
folder).  The record holds a generation number, the training step, the user's
metadata, one checksum per block of rows (a memmap shard; a whole HDF5
dataset) and each data file's size and modification time.

Between commits, updates are written in place.  Before rows are overwritten
for the first time since the last commit:

1. their current bytes are appended to the journal (``<store>.journal``),
   which is fsynced -- created first, with the folder fsynced, if this is the
   first write since the commit;
2. only then is the data written.

A commit:

3. writes every buffered change and fsyncs the data files;
4. updates each touched block's checksum with the hashes of the changed rows
   (old images were hashed when journaled, new values are read back now: the
   cost follows what changed, not the model's size);
5. replaces the commit record with generation + 1 -- *the commit point*;
6. deletes the journal and fsyncs the folder.

Why the order is safe: until step 5 the old record names the old generation,
and every row that differs from it has its old bytes in a complete, fsynced
journal record (1 before 2), so opening rolls the journal back and the store
is exactly at the last commit.  After step 5 the journal's base generation is
older than the record's, so a journal left by a crash between 5 and 6 is
recognised as stale and deleted, never applied.  A record cut short (a crash
during 1) protected a write that never started, and is ignored.

Parameters created since the last commit are marked with the generation that
will commit them; opening drops those the last commit does not cover.

Lazily created parameters (a :class:`~oocnet.store.rowinit.RowInit` given to
``create`` on a disk store) start as zeros on disk and one bit per row says
whether the row was written; a row not written reads as its computed initial
value.  A first write journals the row as a *zero record* (its id only,
:mod:`oocnet.store.journal`) without reading it: its bytes are certainly zeros
(files are created so, and a rollback restores the zeros).  A
commit writes the bitmap of every such parameter that changed to a new file
named by the new generation (temp file, fsync, rename) *before* the commit
point, and the record's ``lazy`` section names each file with its crc32 and
the initializer's spec.  A crash before the commit point leaves an orphan
bitmap (deleted at the next writable open) and the record still naming the
old one, which together with the rolled-back rows is exactly the last commit.

Opening also verifies the checksums of every block whose data file changed
(size or modification time) since the commit record was written -- after a
rollback, or if something else touched the files -- and refuses a store that
fails, unless asked to open it anyway (``allow_corrupt=True``).
:meth:`DurableStore.verify` checks every block.

One writer at a time: a writable store holds an exclusive ``flock`` on a lock
file (``<store>.lock``) holding its pid; a second writer is told that pid.

Readers (``read_only=True``) take no lock and see the last commit.  The files
may hold a running writer's uncommitted rows, but each such row's committed
image is in the journal before the row is written, so a reader reads the
files, *then* takes in any journal records appended since its last look, and
patches those rows back.  It then checks the commit record: if the writer has
committed since the reader opened, the journal that held the old images is
gone, and the read fails asking to reopen.  (A reader holds at most 1 GiB of
old images.)

A reader holds an fd on the commit record and on the journal it reads (a *pin*):
while it is held that inode cannot be reused, so a file found under the same
name with another inode was replaced -- a (size, mtime) stamp can repeat within
a clock tick -- and journal records are read through the pin, never from a
journal that replaced it.  A writer reopening after a crash rolls back rows a
reader may already have read, and deletes the journal that would have patched
them; so before rolling back it rewrites the commit record with a "rollbacks"
count raised by one.  A reader that finds the journal replaced, or the record
replaced with another generation or rollback count, is told to reopen; a record
rewritten at the same ones (a parameter created since the commit deleted, an
HDF5 restamp) is pinned anew and reading goes on.  A reader's refresh runs under
a lock: the pager reads from two threads.  (A store written before commit
records existed has no record to rewrite; its readers are not told of a rollback.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import threading
import zlib
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, ReadOnlyError, StoreError, StoreFormatError, StoreIOError, StoreLockedError
from . import checksum as ck
from . import journal as jr
from .rowinit import LazyRows, bits_at, from_spec, set_bits

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

#: The tail of a bitmap file's name: the key's digest and the commit's generation.
_LAZY_NAME = re.compile(r"[0-9a-f]{16}\.[0-9]+")
LAZY_LEFTOVER = re.compile(_LAZY_NAME.pattern + r"(\.tmp)?")  # ... or its temp file, left by a crash

#: Rows are journaled and hashed in pieces of about this many bytes.
PIECE_BYTES = 4 * 2**20

#: Fault-injection seam for crash tests: when set, called with the name of each
#: point of the protocol as it is passed ("journal:created", "journal:record-head",
#: "journal:appended", "commit:data-synced", "commit:record-tmp", "commit:persisted",
#: "commit:done").  A test can sleep there to be killed inside that window.
FAULT_HOOK = None


def _lazy_crc(bits: bytes, spec: object) -> int:
    """crc32 of a bitmap and the initializer spec it goes with (a changed spec must not pass)."""
    return zlib.crc32(bits, zlib.crc32(json.dumps(spec, sort_keys=True).encode("utf-8")))


def at(point: str) -> None:
    """Pass a named point of the protocol (see FAULT_HOOK)."""
    if FAULT_HOOK is not None:
        FAULT_HOOK(point)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreIOError(f"reading {path} failed: {exc}.") from exc
    return (st.st_dev, st.st_ino)


def _pin(path: Path) -> tuple[int, tuple[int, int]] | None:
    """An fd held on the file at ``path`` and its (device, inode); None if there is none.

    While the fd is open the inode cannot be reused, so a file later found under the same name
    with the same identity is this one (a (size, mtime) stamp could repeat within a clock tick).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreIOError(f"opening {path} failed: {exc}.") from exc
    st = os.fstat(fd)
    return fd, (st.st_dev, st.st_ino)


def _unpin(pin: tuple[int, tuple[int, int]] | None) -> None:
    if pin is not None:
        os.close(pin[0])


def _mark(record: dict | None) -> tuple[int, int]:
    """(generation, rollbacks) of a commit record: what a reader checks the record against."""
    record = record or {}
    return int(record.get("generation", 0)), int(record.get("rollbacks", 0))


class RowSet:
    """The rows of an ``n_rows``-row parameter journaled since the last commit.

    A sorted int64 array while that is small; past ``n_rows / 8`` bytes (one row in 64 changed),
    a bitmap of one bit per row.  A long run without commits thus holds at most ``n_rows / 8``
    bytes here -- 1.25 MB at 10^7 rows -- where the array grew by 8 bytes per row changed, and
    by as much again while each write copied it.
    """

    def __init__(self, n_rows: int) -> None:
        self.n_rows = int(n_rows)
        self.ids: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self.bits: np.ndarray | None = None
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes if self.bits is None else self.bits.nbytes

    def new(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` (sorted, unique) not in the set."""
        if self.bits is not None:
            return ids[~bits_at(self.bits, ids)]
        pos = np.searchsorted(self.ids, ids)
        seen = pos < self.ids.size
        seen[seen] = self.ids[pos[seen]] == ids[seen]
        return ids[~seen]

    def add(self, ids: np.ndarray) -> None:
        """Add ``ids`` (sorted, unique, none in the set yet)."""
        if ids.size == 0:
            return
        if self.bits is None and 8 * (self.size + ids.size) > (self.n_rows + 7) // 8:
            self.bits = np.zeros((self.n_rows + 7) // 8, dtype=np.uint8)
            set_bits(self.bits, self.ids)
            self.ids = None
        if self.bits is not None:
            set_bits(self.bits, ids)
        else:
            self.ids = np.insert(self.ids, np.searchsorted(self.ids, ids), ids)
        self.size += ids.size

    def pieces(self, rows: int):
        """The set's ids in increasing order, at most ``max(rows, 8)`` at a time."""
        if self.bits is None:
            for a in range(0, self.ids.size, rows):
                yield self.ids[a : a + rows]
            return
        chunk = max(1, rows // 8)  # bytes of bitmap: 8 rows each
        for b in range(0, self.bits.size, chunk):
            ids = 8 * b + np.flatnonzero(np.unpackbits(self.bits[b : b + chunk], bitorder="little"))
            if ids.size:
                yield ids


def _doc_crc(doc: dict) -> int:
    body = {k: v for k, v in doc.items() if k != "crc"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def sealed(doc: dict) -> dict:
    """``doc`` with ``"crc"``: the crc32 of its canonical JSON (sorted keys, no spaces) without that field.

    Commit records and manifests carry it, so that a changed byte that still parses -- a digit of
    the step, a key -- is found on open (the data has its own checksums).
    """
    return {**doc, "crc": _doc_crc(doc)}


def check_seal(where: str, doc: dict) -> None:
    """Raise ChecksumError if ``doc`` carries a ``"crc"`` (see :func:`sealed`) that its contents do not match.

    Documents written before the field existed have none and are taken as they are.
    """
    if "crc" not in doc:
        return
    crc = doc["crc"]
    if isinstance(crc, bool) or not isinstance(crc, int) or crc != _doc_crc(doc):
        raise ChecksumError(
            f"{where}: its contents do not match its own crc ({crc!r}): the file was damaged, or changed "
            f"by hand. The store is not opened on it."
        )


def write_atomic(path: Path, data: bytes, dir_fd: int) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync folder)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        at("commit:record-tmp")
        os.replace(tmp, path)
        os.fsync(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a half-written temp file (a full disk): not left behind
            os.unlink(tmp)
        raise StoreIOError(f"writing {path} failed: {exc.strerror or exc} (errno {exc.errno}).") from exc


def lock_holder(lock_path: Path) -> int | None:
    """The pid of the process holding the writer lock ``lock_path`` now, or None when no one holds it.

    The pid written in the lock file stays after its writer closed the store (and may have been
    reused since), so it says nothing by itself. On Linux the kernel's table of locks
    (``/proc/locks``) is read, which takes no lock. Elsewhere a shared lock is tried and released at
    once: a writer opening the store in that instant is refused as if the store were held (it may
    open it again).
    """
    try:
        st = os.stat(lock_path)
    except OSError:
        return None
    try:
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        table = None
    if table is not None:
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        same_inode = None
        for line in table.splitlines():
            parts = line.split()  # "7: FLOCK  ADVISORY  WRITE 4223 fd:00:4718596 0 EOF"; waiters have "->"
            if "->" in parts or "FLOCK" not in parts or "WRITE" not in parts:
                continue
            try:
                pid, dev_ino = int(parts[parts.index("WRITE") + 1]), parts[parts.index("WRITE") + 2]
            except (ValueError, IndexError):
                continue
            if dev_ino == want:
                return pid
            if dev_ino.rsplit(":", 1)[-1] == str(st.st_ino):
                same_inode = pid  # the kernel names the file system's device, which stat may not (btrfs)
        if same_inode is None:
            return None
        # The same inode number on another device: the holder's pid is in the file if the file is ours
        return same_inode if _written_pid(lock_path) == same_inode else None
    return _flock_held(lock_path)


def _written_pid(lock_path: Path) -> int | None:
    """The pid the last writer wrote in its lock file (None if unreadable)."""
    try:
        with open(lock_path, "rb") as f:
            return int(f.read(32).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None


def _flock_held(lock_path: Path) -> int | None:
    """The pid written in ``lock_path`` (-1 if unreadable) if its lock is held now, else None: a shared lock is
    tried and released at once."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _written_pid(lock_path) or -1
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the shared lock if it was taken
    return None


def acquire_lock(lock_path: Path, store_path: Path) -> int:
    """Take the writer lock of ``store_path``; return its fd. Raises StoreLockedError naming the holder's pid."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ReadOnlyError(
                f"cannot open {lock_path.parent} for writing ({exc.strerror}); open the store with read_only=True."
            ) from exc
        raise StoreIOError(f"creating the lock file {lock_path} failed: {exc.strerror or exc}.") from exc
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _written_pid(lock_path) or "unknown"
        raise StoreLockedError(
            f"store {store_path} is already open for writing by process {holder} (lock file {lock_path}); "
            f"close it there, or open this one read-only (read_only=True; oocnet inspect and oocnet evaluate "
            f"read without the lock)."
        ) from None
    except OSError:  # a filesystem without flock: proceed unlocked
        pass
    pid = str(os.getpid()).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, pid, 0)
    except OSError:
        pass
    return fd


class DurableStore:
    """Mixin giving a persistent :class:`~oocnet.store.base.Store` commits, a journal and checksums.

    The backend calls :meth:`_durable_open` once its own metadata is loaded,
    and implements the hooks below.  The base class's write methods call
    :meth:`_before_write` before every data write.
    """

    lazy_init = True

    # -- hooks the backend implements ------------------------------------------------
    def _journal_path(self) -> Path: ...

    def _lazy_place(self) -> tuple[Path, str]:
        """The folder of the written-row bitmaps of lazily created parameters, and their name prefix."""
        raise NotImplementedError

    def _blocks(self, key: str) -> np.ndarray:
        """Start rows of the checksum blocks of ``key`` (first is 0)."""

    def _block_label(self, key: str, i: int) -> str:
        """A file (or dataset) name for block ``i`` of ``key``, for messages."""

    def _block_files(self, key: str) -> list[Path]:
        """The data file holding each block of ``key``."""

    def _sync_data(self) -> None:
        """fsync every data file written since the last commit."""

    def _persist_commit(self, record: dict) -> None:
        """Replace the commit record atomically and durably."""

    def _drop_params(self, keys: list[str]) -> None:
        """Delete parameters the last commit does not cover (at open)."""

    def _commit_record_path(self) -> Path:
        """The file holding the commit record."""

    def _read_commit(self) -> dict:
        """The commit record on disk now (``{}`` if the store has none)."""

    # -- state -------------------------------------------------------------------------
    def _durable_init(self, dir_fd: int) -> None:
        self._dir_fd_durable = dir_fd
        self._journal: jr.Journal | None = None
        self._journaled: dict[str, RowSet] = {}
        self._hash_delta: dict[str, dict[int, int]] = {}
        self._commit: dict = {"generation": 0, "step": 0, "metadata": {}, "time": None}
        self._checksums: dict[str, list[int]] = {}
        self._stamps: dict[str, list[int]] = {}
        self._uncommitted: set[str] = set()
        self._pending_delete: set[str] = set()  # committed parameters deleted since: removed at commit
        self._replaying = False
        self._recompute: set[tuple[str, int]] = set()
        self._lazy_record: dict[str, dict] = {}  # the last commit's "lazy" section
        self._lazy_keys: set[str] = set()  # parameters the data marks as created lazily (see _mark_lazy)
        self._lock_fd = -1
        # A reader's pins: fds held on the commit record and on the journal it has read, so that a
        # file replaced under the same name always shows as another inode (see _refresh_snapshot).
        self._record_pin: tuple[int, tuple[int, int]] | None = None
        self._journal_pin: tuple[int, tuple[int, int]] | None = None
        self._record_mark: tuple[int, int] = (0, 0)  # (generation, rollbacks) of the record this reader opened
        self._snap_lock = threading.Lock()  # a reader's refresh and patch: the pager reads from two threads

    @property
    def last_commit(self) -> dict:
        """The last commit: ``generation``, ``step``, ``metadata``, ``time`` (ISO 8601, UTC)."""
        return {k: self._commit[k] for k in ("generation", "step", "metadata", "time")}

    def has_uncommitted(self) -> bool:
        """Whether anything was written (or created) since the last commit."""
        return self._journal is not None or bool(self._uncommitted) or bool(self._pending_delete)

    def delete(self, key: str) -> None:
        """Remove a parameter -- at the next commit, if the last commit holds it.

        Until then its files stay as they are (hidden from the store's users), so a crash,
        a rollback or a copy of the store still finds the committed parameter.  A
        parameter created since the last commit goes at once.
        """
        self._check_writable()
        self._checked_info(key)
        if key in self._uncommitted:
            self._delete(key)
        else:
            self._pending_delete.add(key)

    def _finish_deletes(self) -> None:
        """After a commit point: remove the files of the parameters that commit dropped."""
        for key in sorted(self._pending_delete):
            if key in self._keys():
                self._delete(key)
            self._pending_delete.discard(key)

    @property
    def journal_bytes(self) -> int:
        """Bytes in the journal since the last commit (0 when there is none)."""
        return self._journal.bytes_written if self._journal is not None else 0

    def _file_stamp(self, path: Path) -> list[int]:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]

    # -- open ------------------------------------------------------------------------
    def _durable_open(self, record: dict | None, verify: bool, allow_corrupt: bool) -> None:
        """Adopt the loaded commit ``record``, roll back a journal, drop uncommitted params, verify."""
        if record is not None:
            self._commit = {k: record.get(k) for k in ("generation", "step", "metadata", "time")}
            self._checksums = {k: list(v) for k, v in record.get("checksums", {}).items()}
            self._stamps = dict(record.get("stamps", {}))
            # A commit's parameters exist until a later commit drops them (their files go after that
            # commit's record), so one missing now was damaged or removed by hand -- or its name was,
            # which would make its data look like an uncommitted parameter, dropped below. Writers only:
            # a reader lists an HDF5 file's datasets before it loads the record, and a commit in between
            # can add a parameter it has not seen (it never shows data under a wrong name either way).
            missing = [] if self.read_only else sorted(k for k in self._checksums if not self._has(k))
            if missing:
                raise StoreFormatError(
                    f"{self.path}: the last commit (generation {record.get('generation')}, step "
                    f"{record.get('step')}) holds {', '.join(map(repr, missing))}, but the store has no such "
                    f"parameter (it has {', '.join(map(repr, sorted(self._keys()))) or 'none'}): its files, or the "
                    f"name they are stored under, are damaged or missing. Nothing was changed."
                )
        else:  # written before commits existed (or brand new): adopt what is there, checksums unknown
            self._checksums = {k: [None] * len(self._blocks(k)) for k in self._keys()}
        gen = self._commit["generation"]
        if self.read_only:
            # A writer may commit while this reader opens.  The record is pinned now and checked
            # at every read; a commit that landed since the record was loaded shows as a newer
            # generation here.  Either way the reader is told to reopen.
            self._record_mark = _mark(record)
            self._record_pin = _pin(self._commit_record_path())
            # A commit or a rollback since the record was loaded; unreadable now (None): the reads check again.
            if self._disk_mark() not in (self._record_mark, None) or self._record_replaced():
                raise self._committed_since()
        self._load_lazy(record.get("lazy", {}) if record is not None else {})
        stale = [k for k in self._keys() if k not in self._checksums]
        rolled = False
        path = self._journal_path()
        if path.exists():
            try:
                base = jr.read_base_generation(path)
            except StoreIOError:
                if not self.read_only:
                    raise
                # Deleted by the writer since the check (a commit or a rollback): the first read
                # (_refresh_snapshot) looks at whatever journal is there then.
                base = None
            if base is not None and base > gen:
                if self.read_only and self._on_disk_generation() != gen:
                    raise self._committed_since()
                raise StoreFormatError(
                    f"journal {path} rolls back to generation {base}, but the store's last commit is {gen}; "
                    f"expected a generation <= {gen}. The commit record may have been replaced by an older copy."
                )
            if base == gen and not self.read_only:
                if record is not None:
                    # Readers open now may have read rows this rollback undoes; the journal that
                    # would patch them goes next.  The record is rewritten first with its rollback
                    # count raised, which tells them to reopen (_check_record).
                    record = {**record, "rollbacks": _mark(record)[1] + 1}
                    self._persist_commit(record)
                self._rollback(path)
                rolled = True
            if not self.read_only:
                jr.delete(path, self._dir_fd_durable)
        if stale:
            if self.read_only:  # a reader sees the last commit: parameters created since are hidden
                self._pending_delete.update(stale)
            else:
                self._drop_params(stale)
        if self.read_only:
            # A reader sees the last commit: rows a writer has changed since are read from the
            # journal's old images (refreshed at every read, see _patch_read).
            self._snap: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            self._snap_pos: int | None = None
            self._snap_bytes = 0
            self._refresh_snapshot()
        if verify:
            self._verify_changed(allow_corrupt, rolled)

    # -- readers at the last commit ----------------------------------------------------------
    #: A reader keeps at most this many bytes of old row images; past it, reopen after a commit.
    SNAPSHOT_BYTES = 2**30

    def _record_replaced(self) -> bool:
        """Whether the commit record's name now holds another file than the one pinned."""
        return _identity(self._commit_record_path()) != (self._record_pin[1] if self._record_pin else None)

    def _check_record(self) -> None:
        """Tell the reader to reopen if a commit or a rollback rewrote the commit record since it opened.

        A record rewritten for another reason (a writer deleting a parameter created since the
        commit) keeps its generation and rollback count: the reader pins the new file and goes on.
        """
        if not self._record_replaced():
            return
        path = self._commit_record_path()
        pin = _pin(path)
        if pin is None or self._disk_mark() != self._record_mark or _identity(path) != pin[1]:
            _unpin(pin)
            raise self._committed_since()
        _unpin(self._record_pin)
        self._record_pin = pin

    def _journal_replaced(self, path: Path) -> bool:
        """Whether the journal this reader has read from is no longer the one at ``path``."""
        return self._journal_pin is not None and _identity(path) != self._journal_pin[1]

    def _refresh_snapshot(self) -> None:
        """Take in journal records appended since the last look; fail if the writer committed or rolled
        back since this reader opened.

        A reader reads data first, then patches it from the journal.  Both files are pinned (an fd
        held on each), so that a file replaced under the same name is always another inode, and
        records are read through the pin, never from a journal that replaced it.  A journal
        replaced at the same generation means a rollback (a writer reopened after a crash): rows
        read before it may hold values the rollback undid, which the new journal does not know --
        so does the commit record, which a rolling-back writer rewrites first with its rollback
        count raised (_durable_open, _check_record).
        """
        path = self._journal_path()
        try:
            if self._journal_replaced(path):
                raise self._committed_since()
            self._take_in_journal(path)
        except (StoreIOError, StoreFormatError) as exc:
            # The journal went away, or was replaced by the next one, while it was read?
            if self._journal_replaced(path) or self._on_disk_generation() != self._commit["generation"]:
                raise self._committed_since() from exc
            self._check_record()
            raise
        if self._journal_replaced(path):
            raise self._committed_since()
        self._check_record()

    def _take_in_journal(self, path: Path) -> None:
        if self._snap_pos is None:
            pin = _pin(path)
            if pin is None:
                return  # no journal: nothing changed since the commit
            try:
                base = jr.read_base_generation(path, pin[0])
            except BaseException:
                _unpin(pin)
                raise
            if base != self._commit["generation"]:
                # Another commit's journal (the record check tells), or one being created: look
                # again at the next read.
                _unpin(pin)
                return
            self._journal_pin, self._snap_pos = pin, jr._HEAD.size
        size = os.fstat(self._journal_pin[0]).st_size
        if size > self._snap_pos:
            end: list = []
            infos = {k: self._info(k) for k in self._keys()}
            fd = self._journal_pin[0]
            recs = jr.scan(path, lambda k: infos[k].row_nbytes if k in infos else None, start=self._snap_pos,
                           end_out=end, fd=fd)
            for rec in recs:
                info = infos[rec.key]
                old = np.frombuffer(jr.read_rows(path, rec, 0, rec.ids.size, fd), dtype=info.dtype)
                old = old.reshape((rec.ids.size, *info.row_shape))
                have_ids, have_rows = self._snap.get(rec.key, (np.zeros(0, np.int64), old[:0]))
                fresh = ~np.isin(rec.ids, have_ids)  # the oldest image of a row wins
                ids = np.concatenate([have_ids, rec.ids[fresh]])
                rows = np.concatenate([have_rows, old[fresh]])
                order = np.argsort(ids, kind="stable")
                self._snap[rec.key] = (ids[order], rows[order])
                self._snap_bytes += old[fresh].nbytes
            self._snap_pos = end[0]
            if self._snap_bytes > self.SNAPSHOT_BYTES:
                raise StoreError(
                    f"a writer has changed more than {self.SNAPSHOT_BYTES >> 20} MiB of {self.path} since this "
                    f"read-only store was opened; reopen it after the writer's next commit."
                )

    def _committed_since(self) -> StoreError:
        return StoreError(
            f"{self.path} was committed (or rolled back after a crash) by its writer since this read-only "
            f"store was opened at generation {self._commit['generation']}; reopen it to read the last commit."
        )

    def _patch_read(self, key, start, stop, ids, out) -> None:
        if not self.read_only or self._closed:
            return
        with self._snap_lock:  # one refresh at a time: two would each pin the journal and write _snap
            self._refresh_snapshot()
            snap = self._snap.get(key)
        if snap is None:
            return
        s_ids, s_rows = snap
        if ids is None:
            lo, hi = np.searchsorted(s_ids, [start, stop])
            if hi > lo:
                out[s_ids[lo:hi] - start] = s_rows[lo:hi]
        else:
            pos = np.minimum(np.searchsorted(s_ids, ids), s_ids.size - 1)
            hit = s_ids[pos] == ids
            out[hit] = s_rows[pos[hit]]

    def _rollback(self, path: Path) -> None:
        def row_nbytes_of(key: str):
            return self._info(key).row_nbytes if key in self._keys() else None

        records = jr.scan(path, row_nbytes_of)
        self._replaying = True
        try:
            for rec in reversed(records):  # newest first: the oldest (committed) image lands last
                info = self._info(rec.key)
                step = max(1, PIECE_BYTES // max(1, info.row_nbytes))
                for a in range(0, rec.ids.size, step):
                    b = min(rec.ids.size, a + step)
                    old = np.frombuffer(jr.read_rows(path, rec, a, b), dtype=info.dtype)
                    old = old.reshape((b - a, *info.row_shape))
                    ids = rec.ids[a:b]
                    order = np.argsort(ids, kind="stable")
                    self._write_index(rec.key, ids[order], np.ascontiguousarray(old[order]))
            self._flush()
            self._sync_data()
        finally:
            self._replaying = False

    def _verify_changed(self, allow_corrupt: bool, rolled: bool) -> None:
        changed = []
        for key in self._keys():
            for i, f in enumerate(self._block_files(key)):
                name = f.name
                try:
                    now = self._file_stamp(f)
                except OSError:
                    continue
                if rolled or self._stamps.get(name) != now:
                    changed.append((key, i))
        bad = self._check_blocks(changed)
        if bad and self.read_only and self._on_disk_generation() != self._commit["generation"]:
            raise self._committed_since()  # not damage: a writer committed while these were read
        if bad and allow_corrupt:
            # Opened anyway: the next commit takes the blocks as they are (full recompute).
            labels = {(k, lbl) for k, lbl in bad}
            for key, i in changed:
                if (key, self._block_label(key, i)) in labels:
                    self._recompute.add((key, i))
        if bad and not allow_corrupt:
            shown = ", ".join(f"{k} ({lbl})" for k, lbl in bad[:5])
            raise ChecksumError(
                f"store {self.path} fails verification: {len(bad)} block(s) differ from the checksums of the "
                f"last commit: {shown}. To read it anyway, open it from Python with "
                f"oocnet.open_store(path, allow_corrupt=True)."
            )

    def _check_blocks(self, blocks: list[tuple[str, int]]) -> list[tuple[str, str]]:
        bad = []
        for key, i in blocks:
            want = self._checksums.get(key)
            if want is None or i >= len(want) or want[i] is None:
                continue
            if self._block_sum(key, i) != want[i]:
                bad.append((key, self._block_label(key, i)))
        return bad

    def _block_sum(self, key: str, i: int) -> int:
        info = self._info(key)
        starts = self._blocks(key)
        a, b = int(starts[i]), int(starts[i + 1]) if i + 1 < len(starts) else info.n_rows
        step = max(1, PIECE_BYTES // max(1, info.row_nbytes))
        total = 0
        buf = None
        for r in range(a, b, step):
            s = min(b, r + step)
            if buf is None or buf.shape[0] != s - r:
                buf = np.empty((s - r, *info.row_shape), dtype=info.dtype)
            self._read_rows(key, r, s, buf)
            self._patch_read(key, r, s, None, buf)  # a reader checks the committed images
            total = ck.add(total, ck.block_sum(buf, r))
        return total

    def _new_block_sum(self, key: str, i: int) -> int:
        """:meth:`_block_sum` of a parameter created since the last commit, without reading unwritten blocks."""
        lazy = self._lazy.get(key)
        if lazy is not None:
            starts = self._blocks(key)
            a, b = int(starts[i]), int(starts[i + 1]) if i + 1 < len(starts) else lazy.n_rows
            if not lazy.bits[a >> 3 : (b + 7) >> 3].any():  # its rows are the zeros the file was created with
                return ck.zero_rows_sum(a, b)
        return self._block_sum(key, i)

    def verify(self) -> list[tuple[str, str]]:
        """Recompute every block's checksum; return ``(key, file)`` of each that differs from the last commit.

        Changes not yet committed make their blocks differ; commit first to check a live store.
        """
        self._check_open()
        blocks = [(k, i) for k in self._keys() for i in range(len(self._blocks(k)))]
        return self._check_blocks(blocks)

    # -- writes ---------------------------------------------------------------------------
    def _before_write(self, key: str, ids: np.ndarray) -> None:
        """Journal the committed image of rows ``ids`` (sorted) of ``key`` not journaled yet."""
        if self._replaying or key in self._uncommitted:
            return  # a parameter created since the commit is dropped whole on rollback
        done = self._journaled.get(key)
        new = ids if done is None else done.new(ids)
        if new.size == 0:
            return
        if self._journal is None:
            if self._journal_path().exists():  # none open: one on disk is stale (its commit happened)
                jr.delete(self._journal_path(), self._dir_fd_durable)
            self._journal = jr.Journal(self._journal_path(), self._commit["generation"], self._dir_fd_durable)
            at("journal:created")
        info = self._info(key)
        starts = self._blocks(key)
        # Bookkeeping is merged only once every record is in: if an append fails, the rows are
        # journaled again next time (an identical image; rollback takes either) and counted once.
        delta = dict(self._hash_delta.get(key, {}))
        step = max(1, PIECE_BYTES // max(1, info.row_nbytes))
        try:
            for a in range(0, new.size, step):
                ids_p = new[a : a + step]
                # A lazy table's rows never written hold zeros -- files are created so, and a
                # rollback restores them -- so their ids alone are journaled, in a zero record.
                written = self._written_rows(key, ids_p)
                parts = [(ids_p, True)] if written is None else [(ids_p[written], True), (ids_p[~written], False)]
                for ids_q, stored in parts:
                    if ids_q.size == 0:
                        continue
                    if stored:
                        old = np.empty((ids_q.size, *info.row_shape), dtype=info.dtype)
                        self._read_index(key, ids_q, old)
                        self._journal.append(key, ids_q, old)
                    else:
                        old = None
                        self._journal.append(key, ids_q, None, info.row_nbytes)
                    at("journal:appended")
                    blk = np.searchsorted(starts, ids_q, side="right") - 1
                    for j in np.unique(blk).tolist():
                        sel = blk == j
                        gone = ck.zero_rows_sum_at(ids_q[sel]) if old is None else ck.sum_at(old[sel], ids_q[sel])
                        delta[j] = ck.sub(delta.get(j, 0), gone)
        except BaseException:
            if self._journal.broken:
                self._failed = True  # a torn record stays in the journal: nothing may be written on
            raise
        self._hash_delta[key] = delta
        if done is None:
            done = self._journaled[key] = RowSet(info.n_rows)
        done.add(new)

    def _after_create(self, key: str) -> None:
        self._uncommitted.add(key)
        if key in self._lazy:
            self._mark_lazy(key)

    def _mark_lazy(self, key: str) -> None:
        """Record beside the data that ``key`` was created lazily: then its commit must hold its bitmap.

        Backends keep ``_lazy_keys`` as they read their metadata and write it with it (the
        memmap manifest lists it; HDF5 extends this to set a dataset attribute), and drop a
        key from it when they delete the parameter.
        """
        self._lazy_keys.add(key)

    # -- lazily created parameters: which rows were written, per commit --------------------------
    def _lazy_file(self, key: str, generation: int) -> str:
        _, prefix = self._lazy_place()
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()
        return f"{prefix}{digest}.{generation}"

    def _load_lazy(self, section: object) -> None:
        """Adopt the commit's ``lazy`` section: each lazily created parameter's initializer and bitmap."""
        where = str(self._commit_record_path())
        if not isinstance(section, dict):
            raise StoreFormatError(f"{where}: expected 'lazy' to be an object, got {section!r}.")
        folder, prefix = self._lazy_place()
        self._lazy.clear()
        for key in self._keys():
            if key in self._checksums and key not in section and key in self._lazy_keys:
                raise StoreFormatError(
                    f"{where}: parameter {key!r} was created lazily, but the commit record has no bitmap of its "
                    f"written rows (was the record rewritten by another program?); its rows cannot be told apart "
                    f"from its initial values."
                )
        entries = {}
        for key, entry in section.items():
            if key not in self._keys():
                continue
            info = self._info(key)
            try:
                name, crc = entry["file"], entry["crc"]
                if isinstance(name, str) and not name.startswith(prefix):
                    # An HDF5 store renamed with its side files: bitmaps are named after the store's file.
                    i = name.rfind(".written.")
                    moved = prefix + name[i + len(".written."):] if i > 0 and prefix.endswith(".written.") else None
                    if moved is not None and _LAZY_NAME.fullmatch(moved[len(prefix):]) and (folder / moved).exists():
                        name, entry = moved, {**entry, "file": moved}
                if not isinstance(name, str) or not name.startswith(prefix) or \
                        not _LAZY_NAME.fullmatch(name[len(prefix):]):
                    raise ValueError(f"a file name {prefix}<16 hex digits>.<generation>, got {name!r}")
                if isinstance(crc, bool) or not isinstance(crc, int):
                    raise ValueError(f"an integer crc, got {crc!r}")
                init = from_spec(entry.get("init"), f"{where}: lazy[{key!r}]")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StoreFormatError(f"{where}: expected lazy[{key!r}] to name a bitmap file and its crc, "
                                       f"got {entry!r}: {exc}.") from exc
            path = folder / name
            try:
                data = path.read_bytes()
            except FileNotFoundError as exc:
                if self.read_only and self._on_disk_generation() != self._commit["generation"]:
                    raise self._committed_since() from exc
                raise StoreFormatError(f"{path} is missing: the store's last commit needs it to tell which rows "
                                       f"of {key!r} were written.") from exc
            except OSError as exc:
                raise StoreIOError(f"reading {path} failed: {exc}.") from exc
            got = _lazy_crc(data, entry.get("init"))
            if got != crc or len(data) != (info.n_rows + 7) // 8:
                raise ChecksumError(f"{path} (which rows of {key!r} were written) or its record is damaged: "
                                    f"expected {(info.n_rows + 7) // 8} bytes with crc {crc}, got {len(data)} "
                                    f"bytes with crc {got}.")
            if init.shape != info.shape or init.dtype != info.dtype:
                raise StoreFormatError(f"{where}: lazy[{key!r}] is for {init.shape} {init.dtype}, but the parameter "
                                       f"is {info.shape} {info.dtype}.")
            try:
                self._lazy[key] = LazyRows(init, info.n_rows, np.frombuffer(data, dtype=np.uint8).copy())
            except ValueError as exc:
                raise StoreFormatError(f"{path}: {exc}.") from exc
            entries[key] = entry
        self._lazy_record = {k: entries[k] for k in self._lazy}
        if not self.read_only:
            self._remove_lazy_orphans({e["file"] for e in self._lazy_record.values()})

    def _remove_lazy_orphans(self, keep: set[str]) -> None:
        """Delete bitmap files no commit refers to (a crash between writing one and the commit point)."""
        folder, prefix = self._lazy_place()
        try:
            names = [n for n in os.listdir(folder) if n.startswith(prefix) and n not in keep
                     and LAZY_LEFTOVER.fullmatch(n[len(prefix):])]
        except OSError:
            return
        for name in names:
            try:
                os.unlink(folder / name)
            except OSError:
                pass

    def _lazy_section(self, generation: int, live: list[str]) -> dict:
        """The ``lazy`` section of the commit ``generation``, writing the bitmaps that changed."""
        folder, _ = self._lazy_place()
        section = {}
        for key in live:
            lazy = self._lazy.get(key)
            if lazy is None:
                continue
            prev = self._lazy_record.get(key)
            if prev is not None and not lazy.changed and key not in self._uncommitted:
                section[key] = prev
                continue
            name = self._lazy_file(key, generation)
            data = lazy.bits.tobytes()
            write_atomic(folder / name, data, self._dir_fd_durable)  # a failure is a StoreIOError naming the file
            section[key] = {"init": lazy.init.spec, "file": name, "crc": _lazy_crc(data, lazy.init.spec)}
        return section

    # -- commit ---------------------------------------------------------------------------
    def commit(self, step: int | None = None, metadata: dict | None = None) -> dict:
        """Make everything written so far durable as one commit; return its record.

        Parameters
        ----------
        step : int, optional
            The training step this state belongs to (default: the previous commit's).
        metadata : dict, optional
            JSON-serialisable data stored with the commit.
        """
        self._check_writable()
        if self._failed:
            raise StoreError(
                f"a write to {self.path} failed since the last commit, so its rows may be half-written; "
                f"nothing was committed. Close the store and reopen it: it rolls back to the last commit "
                f"(step {self._commit['step']})."
            )
        self._check_commit_args(step, metadata)
        self._flush()
        checksums = {k: list(v) for k, v in self._checksums.items() if k in self._live_keys()}
        for key, i in self._recompute:
            if key in checksums:
                checksums[key][i] = None
        for key, sums in checksums.items():  # unknown checksums (adopted, or accepted damage): computed in full
            if any(x is None for x in sums):
                checksums[key] = [self._block_sum(key, i) for i in range(len(self._blocks(key)))]
                self._hash_delta.pop(key, None)
                self._journaled.pop(key, None)
        for key in list(self._uncommitted):
            if key in self._live_keys():
                checksums[key] = [self._new_block_sum(key, i) for i in range(len(self._blocks(key)))]
        for key, ids in self._journaled.items():
            if key not in self._live_keys() or key in self._uncommitted:
                continue
            info = self._info(key)
            starts = self._blocks(key)
            sums = checksums[key]
            for j, d in self._hash_delta.get(key, {}).items():
                sums[j] = ck.add(sums[j], d)
            step_rows = max(1, PIECE_BYTES // max(1, info.row_nbytes))
            for ids_p in ids.pieces(step_rows):
                new = np.empty((ids_p.size, *info.row_shape), dtype=info.dtype)
                self._read_index(key, ids_p, new)
                blk = np.searchsorted(starts, ids_p, side="right") - 1
                for j in np.unique(blk).tolist():
                    sel = blk == j
                    sums[j] = ck.add(sums[j], ck.sum_at(new[sel], ids_p[sel]))
        self._sync_data()
        at("commit:data-synced")
        stamps = {}
        for key in checksums:
            for f in self._block_files(key):
                stamps[f.name] = self._file_stamp(f)
        generation = int(self._commit["generation"]) + 1
        lazy = self._lazy_section(generation, list(checksums))
        record = {
            "generation": generation,
            "step": int(step) if step is not None else self._commit["step"],
            "metadata": metadata if metadata is not None else {},
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checksums": checksums,
            "stamps": stamps,
            "lazy": lazy,
        }
        try:
            self._persist_commit(record)  # the commit point
        except BaseException:
            # Interrupted (or failed) after the record reached the disk -- e.g. in the folder's
            # fsync after the rename: the commit happened, and memory must follow it, or the next
            # writes would not be journaled against it.
            if self._on_disk_generation() != record["generation"]:
                raise
            self._committed(record, checksums, stamps)
            raise
        self._committed(record, checksums, stamps)
        at("commit:persisted")
        jr.delete(self._journal_path(), self._dir_fd_durable)  # stale now: a crash before this ignores it
        self._finish_deletes()  # the record no longer names them: a crash now leaves only orphan files
        self._remove_lazy_orphans({e["file"] for e in lazy.values()})
        at("commit:done")
        return self.last_commit

    def _disk_mark(self) -> tuple[int, int] | None:
        """(generation, rollbacks) of the commit record on disk now; None if it cannot be read."""
        try:
            return _mark(self._read_commit())
        except Exception:  # noqa: BLE001 - unreadable: as _on_disk_generation
            return None

    def _on_disk_generation(self) -> int | None:
        """The generation of the commit record on disk now; None if it cannot be read."""
        try:
            return int(self._read_commit().get("generation", 0))
        except Exception:  # noqa: BLE001 - unreadable: treat the commit as not made
            return None

    def _committed(self, record: dict, checksums: dict, stamps: dict) -> None:
        """Bring the in-memory state to the commit ``record`` that is on disk (no IO but closing an fd)."""
        self._commit = {k: record[k] for k in ("generation", "step", "metadata", "time")}
        self._checksums, self._stamps = checksums, stamps
        self._lazy_record = dict(record.get("lazy", {}))
        for key in [k for k in self._lazy if k not in self._lazy_record]:
            del self._lazy[key]  # deleted (or never committed and dropped)
        for lazy in self._lazy.values():
            lazy.changed = False
        journal, self._journal = self._journal, None
        self._journaled.clear()
        self._hash_delta.clear()
        self._uncommitted.clear()
        self._recompute.clear()
        if journal is not None:
            journal.close()

    def _durable_close(self) -> None:
        for pin in (self._record_pin, self._journal_pin):
            _unpin(pin)
        self._record_pin = self._journal_pin = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # also releases the flock
            self._lock_fd = -1
