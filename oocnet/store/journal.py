"""The rollback journal: old images of rows, written before the rows are overwritten.

Format, version 2 (all integers little-endian)
==============================================

A journal file starts with a 32-byte header::

    offset  size  field
    0       8     magic b"OOCJNL\\x00\\x02" (version 1, b"OOCJNL\\x00\\x01", is read too:
                  it is version 2 without zero records)
    8       8     base generation (u64): the commit this journal rolls back to
    16      8     reserved, 0
    24      4     crc32 of bytes 0..24
    28      4     reserved, 0

then records, each::

    0       4     magic b"JREC"
    4       4     key length K (u32)
    8       8     row count N (u64)
    16      8     row bytes R (u64)
    24      4     flags (u32): bit 0 set = a *zero record*, whose rows were all
                  zero bytes at the base commit and are not stored; other bits 0
    28      4     crc32 of bytes 0..28 of this record
    32      K     the parameter key, UTF-8
    32+K    8N    row ids (u64)
    ..      N*R   the rows' bytes as they were at the base commit (C order);
                  absent in a zero record
    ..      4     crc32 of the key, ids and rows

Zero records keep the first writes of a lazily created table's rows (whose
bytes on disk are known zeros, see :mod:`oocnet.store.durable`) at 8 bytes a
row instead of a row's size.

Protocol
========
Before rows are overwritten for the first time since the last commit, their
current bytes are appended as one record and the journal is fsynced; only
then is the data file written.  So at any instant, every row that differs
from the last commit has its committed image in a complete, fsynced record.

A crash can only tear the *last* record (records are appended in order and
each append is fsynced before the write it protects): a record cut short
means its data write never started, so it is skipped.  A complete record
whose checksum fails is corruption, not a tear, and is refused.

Rolling back applies the records newest first, so if a row was recorded
twice the oldest image -- the committed one -- is written last.  Then the
data is fsynced and the journal deleted.  A journal whose base generation is
older than the store's last commit is stale (the commit finished but the
process died before deleting it) and is deleted without being applied.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreFormatError, StoreIOError

MAGIC = b"OOCJNL\x00\x02"
_MAGICS = (MAGIC, b"OOCJNL\x00\x01")  # version 1: no zero records
ZEROS = 1  # record flag: the rows were zeros (not stored)
REC = b"JREC"
_HEAD = struct.Struct("<8sQQII")  # magic, base generation, reserved, crc, reserved
_RHEAD = struct.Struct("<4sIQQII")  # magic, key length, rows, row bytes, flags, crc


def _io(exc: OSError, action: str, path: Path) -> StoreIOError:
    return StoreIOError(f"{action} the journal {path} failed: {exc.strerror or exc} (errno {exc.errno}).")


class Journal:
    """An open journal being appended to (one per store between two commits).

    Parameters
    ----------
    path : Path
        The journal file; created (it must not exist).
    base_generation : int
        Generation of the commit it rolls back to.
    dir_fd : int
        An open fd of the folder holding it, fsynced after creation and deletion.
    """

    def __init__(self, path: Path, base_generation: int, dir_fd: int) -> None:
        self.path, self.dir_fd = Path(path), dir_fd
        self.broken = False  # a failed append could not be cut off: no more records may follow
        self.base_generation = int(base_generation)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise _io(exc, "creating", self.path) from exc
        head = _HEAD.pack(MAGIC, self.base_generation, 0, 0, 0)
        head = _HEAD.pack(MAGIC, self.base_generation, 0, zlib.crc32(head[:24]), 0)
        try:
            self._write_all(head)
            os.fsync(self.fd)
            os.fsync(self.dir_fd)  # the journal's name is durable before any data write relies on it
        except BaseException as exc:  # an interrupt too: no write relies on it yet, so it goes
            self.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _io(exc, "writing", self.path) from exc
            raise
        self.bytes_written = len(head)

    def _write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self.fd, view):]

    def append(self, key: str, rows: np.ndarray, values: np.ndarray | None, row_nbytes: int | None = None) -> None:
        """Record the current bytes ``values`` of rows ``rows`` of ``key``, durably (fsync).

        With ``values`` None the rows' bytes are all zeros (``row_nbytes`` each), recorded
        as a zero record: their ids only.
        """
        if self.broken:
            raise StoreIOError(f"the journal {self.path} holds a torn record that could not be cut off; "
                               f"close the store and reopen it (it rolls back to the last commit).")
        kb = key.encode("utf-8")
        ids = np.ascontiguousarray(rows, dtype="<u8")
        n = ids.size
        flags = ZEROS if values is None else 0
        data = np.zeros(0, np.uint8) if values is None else np.ascontiguousarray(values)
        row_bytes = int(row_nbytes) if values is None else (data.nbytes // n if n else 0)
        head = _RHEAD.pack(REC, len(kb), n, row_bytes, flags, 0)
        head = _RHEAD.pack(REC, len(kb), n, row_bytes, flags, zlib.crc32(head[:28]))
        crc = zlib.crc32(kb)
        crc = zlib.crc32(memoryview(ids).cast("B"), crc)
        crc = zlib.crc32(memoryview(data.reshape(-1)).cast("B"), crc)
        end = self.bytes_written  # the file's length: this record starts here
        try:
            self._write_all(head)
            from .durable import at  # the crash tests' seam: a record torn after its header

            at("journal:record-head")
            self._write_all(kb)
            self._write_all(ids)
            self._write_all(data.reshape(-1))
            self._write_all(struct.pack("<I", crc))
            os.fsync(self.fd)
        except OSError as exc:
            # Cut the torn record off, so that later records follow complete ones; if even that
            # fails the journal cannot take more records (the store must not write on).
            try:
                os.ftruncate(self.fd, end)
                os.lseek(self.fd, end, os.SEEK_SET)
                os.fsync(self.fd)
            except OSError:
                self.broken = True
            raise _io(exc, "appending to", self.path) from exc
        self.bytes_written += _RHEAD.size + len(kb) + ids.nbytes + data.nbytes + 4

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def delete(path: Path, dir_fd: int) -> None:
    """Remove a journal and make the removal durable (fsync the folder)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _io(exc, "deleting", path) from exc
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise _io(exc, "syncing the folder of", path) from exc


def _open(path: Path, fd: int | None):
    """``path`` opened for reading -- or, given ``fd`` (a reader's pin), the file that fd holds."""
    try:
        return open(path, "rb") if fd is None else os.fdopen(os.dup(fd), "rb")
    except OSError as exc:
        raise _io(exc, "reading", path) from exc


def read_base_generation(path: Path, fd: int | None = None) -> int | None:
    """The base generation of the journal at ``path`` (or held by ``fd``); None if its header never
    became complete."""
    try:
        with _open(path, fd) as f:
            f.seek(0)
            head = f.read(_HEAD.size)
    except OSError as exc:
        raise _io(exc, "reading", path) from exc
    if len(head) < _HEAD.size:
        return None  # torn while being created: nothing was written under its protection
    magic, base, _, crc, _ = _HEAD.unpack(head)
    if magic not in _MAGICS:
        raise StoreFormatError(f"journal {path}: expected magic {MAGIC!r}, got {magic!r}.")
    if crc != zlib.crc32(head[:24]):
        raise StoreFormatError(f"journal {path}: header checksum mismatch (the journal is corrupt).")
    return base


@dataclass
class Record:
    """A complete, verified journal record: ``ids`` of ``key``, whose old bytes start at ``offset``."""

    key: str
    ids: np.ndarray
    offset: int
    row_nbytes: int
    zeros: bool = False  # a zero record: the old bytes are zeros, not stored


def scan(path: Path, row_nbytes_of, chunk: int = 4 * 2**20, start: int | None = None,
         end_out: list | None = None, fd: int | None = None) -> list[Record]:
    """Every complete record of the journal at ``path``, oldest first, checksums verified.

    Reads the file once in ``chunk``-sized pieces (a journal can be as large as
    everything changed since the commit).  ``row_nbytes_of(key)`` gives the
    expected row size, or None for a key the store does not hold.  A torn last
    record ends the list; a complete but corrupt record raises StoreFormatError.
    With ``start``, scanning begins at that byte (the end of a previous scan,
    which ``end_out`` receives as its one element).  With ``fd``, the file that fd holds is read
    (``path`` names it in messages).
    """
    out: list[Record] = []
    with _open(path, fd) as f:
        size = os.fstat(f.fileno()).st_size
        pos = _HEAD.size if start is None else start
        while pos < size:
            f.seek(pos)
            head = f.read(_RHEAD.size)
            if len(head) < _RHEAD.size:
                break  # torn record header
            magic, klen, n, rb, flags, hcrc = _RHEAD.unpack(head)
            if magic != REC or hcrc != zlib.crc32(head[:28]) or flags & ~ZEROS:
                raise StoreFormatError(f"journal {path}: record at byte {pos} is corrupt (bad header).")
            zeros = bool(flags & ZEROS)
            stored = 0 if zeros else n * rb
            end = pos + _RHEAD.size + klen + 8 * n + stored + 4
            if end > size:
                break  # torn: the data write it protected never started
            kb = f.read(klen)
            idb = f.read(8 * n)
            crc = zlib.crc32(idb, zlib.crc32(kb))
            left = stored
            while left:
                piece = f.read(min(chunk, left))
                crc = zlib.crc32(piece, crc)
                left -= len(piece)
            (want,) = struct.unpack("<I", f.read(4))
            if crc != want:
                raise StoreFormatError(f"journal {path}: record at byte {pos} is corrupt (checksum mismatch).")
            key = kb.decode("utf-8")
            expected = row_nbytes_of(key)
            if expected is None or (n and expected != rb):
                raise StoreFormatError(
                    f"journal {path}: record for {key!r} has rows of {rb} bytes; the store holds "
                    f"{'no such parameter' if expected is None else f'rows of {expected} bytes'}."
                )
            out.append(Record(key, np.frombuffer(idb, dtype="<u8").astype(np.int64), pos + _RHEAD.size + klen + 8 * n,
                              rb, zeros))
            pos = end
    if end_out is not None:
        end_out.append(pos)
    return out


def read_rows(path: Path, record: Record, start: int, stop: int, fd: int | None = None) -> bytes:
    """The old bytes of rows ``record.ids[start:stop]`` (from the file ``fd`` holds, if given)."""
    if record.zeros:
        return bytes((stop - start) * record.row_nbytes)
    want = (stop - start) * record.row_nbytes
    try:
        with _open(path, fd) as f:
            f.seek(record.offset + start * record.row_nbytes)
            data = f.read(want)
    except OSError as exc:
        raise _io(exc, "reading", path) from exc
    if len(data) != want:  # cut short since it was scanned: replaced by a writer's next journal
        raise StoreIOError(f"reading the journal {path} failed: it ended at {len(data)} of the {want} bytes "
                           f"a record holds (it changed while being read).")
    return data
