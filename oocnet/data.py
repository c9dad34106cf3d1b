"""Training data streamed from files in minibatches, and synthetic Zipfian corpora.

Readers
=======
:func:`open_dataset` opens a file and returns a :class:`Dataset`, which yields
its rows ``(X, y)`` in file order one block at a time (:meth:`Dataset.chunks`);
:func:`batches` turns that stream into minibatches, optionally through a
bounded shuffle buffer.  Nothing is ever read whole: RAM holds a few copies of
one block and the shuffle buffer -- the block read, the rows joined, and their
shuffled copy (measured: 32 MiB blocks and a 32 MiB buffer peaked ~200 MiB
above the start; ~100 MiB without shuffling).

=============  ===========================================  =========================
format         file                                         X per block
=============  ===========================================  =========================
``svmlight``   text, ``label idx:val idx:val ... [# ...]``  CSR (rows, n_features)
``hdf5``       datasets ``X`` (N x d, or a CSR group) + ``y``  ndarray (or CSR)
``npy``        ``X.npy`` (N x d) + a labels ``.npy``          ndarray
``npz``        ``np.savez(X=, y=)`` or ``scipy.sparse.save_npz``  ndarray, or CSR
=============  ===========================================  =========================

* **svmlight / libsvm.**  One example per line: a numeric label, then
  ``index:value`` pairs (any order; repeats are summed later, as an
  :class:`~oocnet.Embedding` treats repeated ids); an optional ``qid:N``
  right after the label is skipped (anywhere else it is an error); ``#`` starts a comment; blank lines are skipped.  Indices are
  **one-based** by default, as libsvm defines the format (``zero_based=True``
  for files written from zero).  Sparse features map to the rows of an
  ``Embedding``: index ``i`` is row ``i - 1`` (one-based).  A malformed line is
  an :class:`~oocnet.errors.InputError` naming ``file:line``.  The file is read
  in blocks of ``block_bytes`` and each block is parsed with vectorised numpy
  conversions; only a block that fails is re-parsed line by line to name the
  line.
* **HDF5.**  ``X`` is a 2-D dataset (or a group holding ``data``, ``indices``,
  ``indptr`` and a ``shape`` attribute or dataset: CSR), ``y`` a dataset of the
  same length; names are parameters.  Rows are read by slices.
* **npy / npz.**  Arrays are streamed with plain reads of their ``.npy``
  bytes -- from the file, or from the zip member (stored or deflated; a zip
  member cannot be memory-mapped, and a memory map would count the file's
  pages in RSS anyway).  A dense ``.npz`` holds ``X`` and ``y``; a CSR
  ``.npz`` is scipy's ``save_npz`` layout (``indptr``, ``indices``, ``data``,
  ``shape``) with the labels in a ``y`` member or a separate ``.npy``
  (``labels=``): ``indptr`` is streamed alongside ``indices`` and ``data``,
  so rows come out in order without reading any member whole.  Arrays saved in
  Fortran order cannot be streamed by rows and are refused.

Labels come out as they are stored (svmlight: float64); the caller decides
what they mean (``oocnet.run`` converts integral labels for classification).

Synthetic corpora
=================
:class:`ZipfCorpus` makes a bag-of-words classification task over a vocabulary
of V words with Zipfian frequencies (or real ones, :func:`wordfreq_vocabulary`)
and a planted, learnable class signal: every class owns a few mid-frequency
"indicative" words, each word of an example is one of its class's indicative
words with probability ``signal_rate``, and otherwise a draw from the
background distribution.  Class priors are Zipfian too, so the majority class
is a real baseline.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError, InputError, OocnetError

FORMATS = ("svmlight", "hdf5", "npy", "npz")
EXTENSIONS = {
    ".svm": "svmlight", ".svmlight": "svmlight", ".libsvm": "svmlight", ".txt": "svmlight",
    ".h5": "hdf5", ".hdf5": "hdf5", ".npy": "npy", ".npz": "npz",
}

#: Rows per block for array formats.
CHUNK_ROWS = 8192
#: Bytes of text per block for svmlight files.  The vectorised parser's
#: temporaries are about 40 bytes per byte of text, so blocks stay small.
BLOCK_BYTES = 256 * 2**10

# libsvm's optional query id: one token right after the label, and nowhere else.
_QID = re.compile(rb"(?m)^([ \t]*\S+[ \t]+)qid:\S*")
_POW10 = 10.0 ** np.arange(-40, 41)
_PLAIN = b"0123456789 \t\r.-+"
# What a number (a label, a value) and an index may be, in ASCII: numpy's and Python's parsers also
# take digits of other scripts, underscores ("1_0" is 10) and surrounding Unicode spaces.
_NUMBER = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
_INDEX = re.compile(rb"[+-]?\d+")
# Bytes of ASCII numbers with exponents, inf or nan: tokens made of these alone are parsed by numpy
# as they are; the patterns above run only on blocks holding other bytes (one C pass decides).
_ASCII_NUMBER_BYTES = _PLAIN + b"eEinfatyINFATY"
_BOM = b"\xef\xbb\xbf"
_LONE_CR = re.compile(rb"\r(?!\n|\Z)")


def _one_colon_per_token(text: bytes) -> bool:
    """Whether every whitespace-separated token of ``text`` holds exactly one ':' with something on each side."""
    b = np.frombuffer(text, dtype=np.uint8)
    if b.size == 0:
        return True
    ws = (b == 32) | ((b - 9) <= 4)  # ' ', '\t', '\n', '\v', '\f', '\r': what bytes.split() splits on
    colon = b == 58
    if colon[0] or colon[-1] or np.any(colon[1:] & ws[:-1]) or np.any(colon[:-1] & ws[1:]):
        return False  # ':2', '1:' or a lone ':'
    start = ~ws
    start[1:] &= ws[:-1]
    # token starts and colons, in order, must alternate: start, colon, start, colon, ...
    ev = colon[np.flatnonzero(start | colon)]
    return ev.size % 2 == 0 and not ev[0::2].any() and bool(ev[1::2].all())


def _fast_numbers(text: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Whitespace-separated plain decimals (``12``, ``-0.5``, ``.25``; no exponents) parsed with numpy.

    Returns the values and, per token, whether it had a decimal point; None when a
    token is not of that form (the caller falls back to a general parser).  Integers
    below 2**53 are exact; fractions agree with ``float()`` to a few ulps.
    """
    b = np.frombuffer(text, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    ws = (b == 32) | (b == 9) | (b == 13)
    first = ~ws
    first[1:] &= ws[:-1]
    nz = ~ws
    last = nz.copy()
    last[:-1] &= ws[1:]
    ends = np.flatnonzero(last) + 1
    n_tok = ends.size
    pos = np.flatnonzero(nz)
    tok = np.cumsum(first, dtype=np.int64)[pos] - 1
    ch = b[pos]
    sign = (ch == 45) | (ch == 43)
    if sign.any():
        if not np.array_equal(np.flatnonzero(sign), np.flatnonzero(first[pos] & sign)):
            return None  # a sign inside a token
    is_dot = ch == 46
    dot_tok = tok[is_dot]
    had_dot = np.zeros(n_tok, dtype=bool)
    dotpos = ends.copy()
    if dot_tok.size:
        if np.any(np.bincount(dot_tok, minlength=n_tok) > 1):
            return None
        dotpos[dot_tok] = pos[is_dot]
        had_dot[dot_tok] = True
    q = dotpos[tok]
    e = q - pos
    e -= pos < q
    dig = ~(is_dot | sign)
    if not dig.any() or e.max() > 40 or e.min() < -40:
        return None
    if np.any(np.bincount(tok[dig], minlength=n_tok) == 0):
        return None  # a token of only a sign or a point
    vals = np.bincount(tok[dig], weights=(ch[dig] - 48.0) * _POW10[e[dig] + 40], minlength=n_tok)
    if sign.any():
        neg = tok[ch == 45]
        vals[neg] = -vals[neg]
    return vals, had_dot


def infer_format(path) -> str:
    """The format of ``path`` from its extension (see :data:`EXTENSIONS`)."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ConfigError(
            f"cannot tell the format of {os.fspath(path)!r} from its extension; expected one of "
            f"{', '.join(sorted(EXTENSIONS))}, or give the format ({', '.join(FORMATS)})."
        )
    return EXTENSIONS[suffix]


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _existing(path, what: str = "data file") -> Path:
    p = Path(os.fspath(path))
    if not p.is_file():
        raise InputError(f"{what} {os.fspath(path)!r} does not exist (or is not a file).")
    return p


class Dataset:
    """Rows ``(X, y)`` of a file, read in order one block at a time.

    Attributes
    ----------
    path : Path
        The file.
    format : str
        One of :data:`FORMATS`.
    n_rows : int or None
        Number of examples when the format records it (None for svmlight; see
        :meth:`count_rows`).
    n_features : int
        Width of X.
    sparse : bool
        Whether blocks of X are CSR matrices (else 2-D ndarrays).
    """

    format = "?"
    sparse = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_rows: int | None = None
        self.n_features = 0

    def chunks(self) -> Iterator[tuple[object, np.ndarray]]:
        """Yield ``(X, y)`` blocks in file order: X a CSR matrix or ndarray (rows x n_features), y (rows, ...)."""
        raise NotImplementedError

    def count_rows(self) -> int:
        """The number of examples (reads the file if the format does not record it)."""
        return int(self.n_rows)

    def __iter__(self):
        return self.chunks()

    def __repr__(self) -> str:
        rows = "?" if self.n_rows is None else self.n_rows
        return f"<{type(self).__name__} {self.path} rows={rows} features={self.n_features}>"


# ---------------------------------------------------------------------------------------
# svmlight / libsvm
# ---------------------------------------------------------------------------------------
class SvmlightDataset(Dataset):
    """An svmlight/libsvm text file (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
    n_features : int, optional
        Width of X.  Indices must lie below it (after removing the base).  When
        omitted, the file is scanned once for its largest index.
    zero_based : bool
        Whether indices start at 0 (default False: one-based, as libsvm).
    block_bytes : int
        Bytes of text parsed at a time.
    dtype : numpy dtype
        Type of the values in X.
    """

    format = "svmlight"
    sparse = True

    def __init__(self, path, *, n_features: int | None = None, zero_based: bool = False,
                 block_bytes: int = BLOCK_BYTES, dtype=np.float32) -> None:
        super().__init__(_existing(path))
        if not isinstance(zero_based, (bool, np.bool_)):
            raise ConfigError(f"zero_based must be True or False, got {zero_based!r}.")
        self.base = 0 if zero_based else 1
        self.block_bytes = _check_positive("block_bytes", block_bytes)
        self.dtype = np.dtype(dtype)
        kind = self.dtype.kind
        self._vmax = (float(np.finfo(self.dtype).max) if kind == "f" else
                      float(np.iinfo(self.dtype).max) if kind in "iu" else None)
        if n_features is None:
            n_features = self._scan_width()
        self.n_features = _check_positive("n_features", n_features)

    def _scan_width(self) -> int:
        top = -1
        for _, idx, _, _, _ in self._blocks(check_width=False):
            if idx.size:
                top = max(top, int(idx.max()))
        return max(top + 1, 1)

    def count_rows(self) -> int:
        """Lines in the file (blank and comment-only lines included: an upper bound, read fast)."""
        if self.n_rows is not None:
            return self.n_rows
        n, last = 0, b"\n"
        with open(self.path, "rb") as fh:
            while True:
                buf = fh.read(1 << 24)
                if not buf:
                    break
                n += buf.count(b"\n")
                last = buf[-1:]
        return n + (last != b"\n")

    def _read_blocks(self) -> Iterator[tuple[bytes, int]]:
        """(text ending at a line end, number of its first line)."""
        line = 1
        with open(self.path, "rb") as fh:
            carry = fh.read(len(_BOM))
            if carry == _BOM:
                carry = b""  # a UTF-8 byte-order mark (Windows editors write one): not part of the first label
            while True:
                buf = fh.read(self.block_bytes)
                if not buf:
                    break
                buf = carry + buf
                if b"\r" in buf:
                    cr = _LONE_CR.search(buf)
                    if cr:  # checked here: a file without a single '\n' would otherwise be read whole
                        raise self._fail(line + buf.count(b"\n", 0, cr.start()),
                                         "found a '\\r' not followed by '\\n': '\\r'-only line endings are not "
                                         "supported; expected '\\n' or '\\r\\n' line endings.")
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                block, carry = buf[: cut + 1], buf[cut + 1:]
                yield block, line
                line += block.count(b"\n")
        if carry.strip():
            yield carry + b"\n", line

    def _blocks(self, check_width: bool = True):
        for text, first in self._read_blocks():
            yield self._parse(text, first, check_width)

    def _fail(self, line: int, what: str) -> InputError:
        return InputError(f"{self.path}:{line}: {what}")

    def _parse(self, text: bytes, first: int, check_width: bool):
        """Parse a block: (labels, indices (base removed), values, indptr, line of each row)."""
        if b"#" in text:
            text = b"\n".join(l.partition(b"#")[0] for l in text.split(b"\n"))
        if b"qid:" in text:
            text = _QID.sub(rb"\1", text)
        labels, rests, lines, counts = [], [], [], []
        for i, line in enumerate(text.split(b"\n")):
            parts = line.split(None, 1)
            if not parts:
                continue
            labels.append(parts[0])
            rest = parts[1] if len(parts) > 1 else b""
            rests.append(rest)
            counts.append(rest.count(b":"))
            lines.append(first + i)
        n = len(labels)
        indptr = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.cumsum(counts, out=indptr[1:])
        try:
            if n and b"".join(labels).translate(None, _ASCII_NUMBER_BYTES) and not all(map(_NUMBER.fullmatch, labels)):
                raise ValueError("a label that is not a number")
            y = np.array(labels).astype(np.float64) if n else np.zeros(0)
            joined = b" ".join(rests)
            if not _one_colon_per_token(joined):  # else an extra ':' here and a missing one there cancel out
                raise ValueError("not one ':' per pair")
            joined = joined.replace(b":", b" ")
            fast = None if joined.translate(None, _PLAIN) else _fast_numbers(joined)
            if fast is not None:
                vals, had_dot = fast
                if vals.size != 2 * int(indptr[-1]) or had_dot[0::2].any():
                    raise ValueError("malformed")
                huge = np.flatnonzero(np.abs(vals[0::2]) >= 2.0**62)  # would wrap in int64
                idx = vals[0::2].astype(np.int64) if not huge.size else None
                val = vals[1::2]
            else:
                tokens = joined.split()
                if len(tokens) != 2 * int(indptr[-1]):
                    raise ValueError("token count")
                if joined.translate(None, _ASCII_NUMBER_BYTES) and not (
                        all(map(_INDEX.fullmatch, tokens[0::2])) and all(map(_NUMBER.fullmatch, tokens[1::2]))):
                    raise ValueError("a token that is not a number")
                pairs = np.array(tokens) if tokens else np.zeros(0, dtype="S1")
                try:
                    idx = pairs[0::2].astype(np.int64)
                except OverflowError:
                    idx = None
                    huge = np.array([k for k, t in enumerate(tokens[0::2]) if abs(int(t)) >= 2**62])
                val = pairs[1::2].astype(np.float64)
        except ValueError:
            self._parse_slow(text, first)  # raises, naming the line
            raise  # pragma: no cover - the slow parser always finds the line
        if idx is None:  # an index too large for int64
            k = int(huge[0])
            row = int(np.searchsorted(indptr, k, side="right")) - 1
            raise self._fail(lines[row], "a feature index is out of range: too large for any vocabulary.")
        if not np.all(np.isfinite(y)):
            raise self._fail(lines[int(np.flatnonzero(~np.isfinite(y))[0])], "the label is NaN or inf.")
        if not np.all(np.isfinite(val)):
            row = int(np.searchsorted(indptr, np.flatnonzero(~np.isfinite(val))[0], side="right")) - 1
            raise self._fail(lines[row], "a feature value is NaN or inf.")
        if val.size and self._vmax is not None:
            big = np.abs(val) > self._vmax  # would become inf (or wrap) in self.dtype
            if big.any():
                k = int(np.flatnonzero(big)[0])
                row = int(np.searchsorted(indptr, k, side="right")) - 1
                raise self._fail(lines[row], f"feature value out of range for {self.dtype}: expected at most "
                                             f"{self._vmax:.8g} in magnitude, got {val[k]:g}.")
        idx -= self.base
        if idx.size:
            bad = idx < 0
            if check_width:
                bad |= idx >= self.n_features
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                row = int(np.searchsorted(indptr, k, side="right")) - 1
                got = int(idx[k]) + self.base
                lo, hi = self.base, (self.n_features + self.base if check_width else None)
                want = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
                base = "zero" if self.base == 0 else "one"
                raise self._fail(lines[row], f"feature index {got} is out of range: expected an index {want} "
                                             f"({base}-based indices, {self.n_features if check_width else '?'} "
                                             f"features).")
        return y, idx, val, indptr, lines

    def _parse_slow(self, text: bytes, first: int) -> None:
        """Parse line by line to name the first malformed line."""
        for i, line in enumerate(text.split(b"\n")):
            parts = line.split()
            if not parts:
                continue
            where = first + i
            label = parts[0].decode("utf-8", "replace")
            if "," in label:
                raise self._fail(where, f"multi-label lines are not supported; expected one numeric label, "
                                        f"got {label!r}.")
            if not _NUMBER.fullmatch(parts[0]):
                raise self._fail(where, f"expected a numeric label first, got {label!r}.")
            for tok in parts[1:]:
                i_s, sep, v_s = tok.partition(b":")
                if i_s == b"qid":
                    raise self._fail(where, f"'qid:' may only come right after the label, got "
                                            f"{tok.decode('utf-8', 'replace')!r} among the features.")
                if not (sep and _INDEX.fullmatch(i_s) and _NUMBER.fullmatch(v_s)):
                    raise self._fail(where, f"expected 'index:value' with an integer index and a number, got "
                                            f"{tok.decode('utf-8', 'replace')!r}.")
        raise InputError(f"{self.path}: could not parse lines from {first}")  # pragma: no cover

    def chunks(self):
        for y, idx, val, indptr, _ in self._blocks():
            X = sp.csr_matrix((val.astype(self.dtype), idx.astype(np.int32 if self.n_features < 2**31 else np.int64),
                               indptr), shape=(len(y), self.n_features))
            yield X, y


def write_svmlight(path, X, y, *, zero_based: bool = False, append: bool = False, comment: str | None = None) -> None:
    """Write rows to an svmlight/libsvm text file (one-based indices unless ``zero_based``).

    Parameters
    ----------
    path : str or os.PathLike
    X : scipy.sparse matrix or 2-D ndarray
        Zeros are not written.  Integral values are written without a decimal point.
    y : array-like, shape (rows,)
    zero_based : bool
    append : bool
        Append to the file instead of replacing it.
    comment : str, optional
        A ``# comment`` line written first.
    """
    X = sp.csr_matrix(X)
    X.sum_duplicates()
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != X.shape[0]:
        raise InputError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels.")
    base = 0 if zero_based else 1
    ints = bool(np.all(X.data == np.round(X.data))) if X.nnz else True
    lab_ints = bool(np.all(y == np.round(y))) if y.size else True
    data = (X.data.astype(np.int64) if ints else X.data).tolist()
    idx = (X.indices.astype(np.int64) + base).tolist()
    labels = (y.astype(np.int64) if lab_ints else y).tolist()
    ptr = X.indptr.tolist()
    out = []
    if comment:
        out.append("# " + comment.replace("\n", " "))
    for r in range(X.shape[0]):
        a, b = ptr[r], ptr[r + 1]
        pairs = " ".join(f"{i}:{v}" for i, v in zip(idx[a:b], data[a:b]))
        out.append(f"{labels[r]} {pairs}" if pairs else f"{labels[r]}")
    with open(path, "a" if append else "w", encoding="ascii") as fh:
        fh.write("\n".join(out))
        fh.write("\n")


# ---------------------------------------------------------------------------------------
# .npy streams (files and zip members)
# ---------------------------------------------------------------------------------------
def _stream_size(fh) -> int | None:
    """Total bytes of a regular file or a zip member, if known (a zip member's from its directory entry)."""
    try:
        st = os.fstat(fh.fileno())
        return st.st_size if os.path.isfile(getattr(fh, "name", "")) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = getattr(fh, "_orig_file_size", None)  # zipfile.ZipExtFile (CPython): the member's size
        return size if isinstance(size, int) else None


class _NpyStream:
    """Rows of one ``.npy`` array read in order from a binary stream (a file or a zip member)."""

    def __init__(self, fh, name: str) -> None:
        self.fh, self.name = fh, name
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        except ValueError as exc:
            raise InputError(f"{name}: not a .npy array ({exc}).") from exc
        if dtype.hasobject:
            raise InputError(f"{name}: holds Python objects (dtype {dtype}); expected a numeric array.")
        if fortran and len(shape) > 1:
            raise InputError(f"{name}: is stored in Fortran order, so its rows cannot be streamed; save it with "
                             f"np.save(path, np.ascontiguousarray(X)).")
        self.shape, self.dtype = tuple(shape), dtype
        self.n_rows = shape[0] if shape else 1
        self.row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self.pos = 0
        # A file cut short is told now, from its size, not after the rows before the cut were trained on.
        size = _stream_size(fh)
        need = self.n_rows * self.row_items * dtype.itemsize
        if size is not None and size - fh.tell() < need:
            raise InputError(f"{name}: is truncated: its header says shape {tuple(shape)} ({need:,} bytes of data), "
                             f"but only {max(0, size - fh.tell()):,} bytes follow it.")

    def read(self, n: int) -> np.ndarray:
        n = min(n, self.n_rows - self.pos)
        nbytes = n * self.row_items * self.dtype.itemsize
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            k = self.fh.readinto(view[got:])
            if not k:
                raise InputError(f"{self.name}: ends early: expected {self.n_rows} rows, the data stops in row "
                                 f"{self.pos + got // max(1, self.row_items * self.dtype.itemsize)}.")
            got += k
        self.pos += n
        return np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def skip_to(self, row: int) -> None:
        """Move forward to ``row`` (reading and dropping what lies between)."""
        while self.pos < row:
            self.read(min(row - self.pos, CHUNK_ROWS * 16))


def _scalar(stream: _NpyStream):
    return stream.read(stream.n_rows).reshape(-1)


def _check_numeric(dtype, where: str, what: str) -> None:
    if np.dtype(dtype).kind not in "biuf":  # strings, records, objects, dates would pass as data
        raise InputError(f"{where}: expected numeric {what} (integer, float or bool), got dtype {dtype}.")


def _finite_block(where: str, X, y: np.ndarray, first: int):
    """``(X, y)``, refused with the file and the (0-based) row when a value is NaN or inf.

    Array formats carry no line numbers; without this the model would refuse the batch without
    saying where in the file it came from.
    """
    def first_bad_row(a: np.ndarray) -> int:
        return int(np.flatnonzero(~np.all(np.isfinite(a.reshape(a.shape[0], -1)), axis=1))[0])

    vals = X.data if sp.issparse(X) else X
    if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
        if sp.issparse(X):
            k = int(np.flatnonzero(~np.isfinite(X.data))[0])
            row = int(np.searchsorted(X.indptr, k, side="right")) - 1
        else:
            row = first_bad_row(X)
        raise InputError(f"{where}: row {first + row} (counting from 0): a feature value is NaN or inf.")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise InputError(f"{where}: row {first + first_bad_row(y)} (counting from 0): the label is NaN or inf.")
    return X, y


def _check_integer(dtype, where: str, what: str) -> None:
    if np.dtype(dtype).kind not in "iu":
        raise InputError(f"{where}: expected integer {what}, got dtype {dtype}.")


def _csr_shape(shape, where: str) -> tuple[int, int]:
    """A CSR matrix's recorded ``(rows, features)``, checked."""
    s = np.asarray(shape)
    if s.shape != (2,) or s.dtype.kind not in "iuf" or not np.all((s >= 0) & (s == np.round(s)) & np.isfinite(s)):
        got = s.tolist() if s.size <= 4 else f"an array of shape {s.shape}"
        raise InputError(f"{where}: expected a CSR shape of two non-negative integers (rows, features), got {got!r}.")
    return int(s[0]), int(s[1])


def _check_labels_len(y_rows: int, x_rows: int, where: str) -> None:
    if y_rows != x_rows:
        raise InputError(f"{where}: X has {x_rows} rows but the labels have {y_rows}; expected one label per row.")


class NpyDataset(Dataset):
    """A dense ``X.npy`` (N x d) with labels in another ``.npy`` (N, ...), streamed by rows.

    Parameters
    ----------
    path : str or os.PathLike
        The features.
    labels : str or os.PathLike
        The labels.
    chunk_rows : int
        Rows per block.
    """

    format = "npy"

    def __init__(self, path, *, labels, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__(_existing(path))
        if labels is None:
            raise ConfigError(f"{path}: a .npy file holds only X; give the labels' .npy file (labels= in Python, "
                              "--labels on the command line).")
        self.labels = _existing(labels, "labels file")
        self.chunk_rows = _check_positive("chunk_rows", chunk_rows)
        with open(self.path, "rb") as fx, open(self.labels, "rb") as fy:
            xs, ys = _NpyStream(fx, str(self.path)), _NpyStream(fy, str(self.labels))
        if len(xs.shape) != 2:
            raise InputError(f"{self.path}: X must be 2-D (rows x features), got shape {xs.shape}.")
        _check_numeric(xs.dtype, str(self.path), "features")
        _check_numeric(ys.dtype, str(self.labels), "labels")
        _check_labels_len(ys.n_rows, xs.n_rows, str(self.path))
        self.n_rows, self.n_features = xs.n_rows, xs.shape[1]

    def chunks(self):
        with open(self.path, "rb") as fx, open(self.labels, "rb") as fy:
            xs, ys = _NpyStream(fx, str(self.path)), _NpyStream(fy, str(self.labels))
            while xs.pos < xs.n_rows:
                first = xs.pos
                yield _finite_block(str(self.path), xs.read(self.chunk_rows), ys.read(self.chunk_rows), first)


class NpzDataset(Dataset):
    """An ``.npz``: dense (members ``X`` and ``y``) or CSR (scipy ``save_npz``: ``indptr``, ``indices``, ``data``, ``shape``).

    Members are streamed (stored or deflated), never loaded whole.  A CSR file's
    labels are its ``y`` member, or the ``.npy`` file ``labels``.

    Parameters
    ----------
    path : str or os.PathLike
    labels : str or os.PathLike, optional
        A ``.npy`` of labels, when the archive has no ``y`` member.
    chunk_rows : int
        Rows per block.
    """

    format = "npz"

    def __init__(self, path, *, labels=None, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__(_existing(path))
        self.chunk_rows = _check_positive("chunk_rows", chunk_rows)
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        except zipfile.BadZipFile as exc:
            raise InputError(f"{self.path}: not an .npz (zip) archive ({exc}).") from exc
        self.members = names
        self.labels = _existing(labels, "labels file") if labels is not None else None
        if {"indptr", "indices", "data", "shape"} <= names:
            self.sparse = True
            with zipfile.ZipFile(self.path) as zf:
                with zf.open("shape.npy") as fh:
                    shape = _scalar(_NpyStream(fh, f"{self.path}[shape]"))
                if "format" in names:
                    with zf.open("format.npy") as fh:
                        fmt = _NpyStream(fh, f"{self.path}[format]").read(1).reshape(-1)[0]
                    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                    if fmt != "csr":
                        raise InputError(f"{self.path}: holds a {fmt!r} sparse matrix; expected 'csr' "
                                         f"(save X.tocsr()).")
                self.n_rows, self.n_features = _csr_shape(shape, f"{self.path}[shape]")
                with zf.open("data.npy") as fh:
                    _check_numeric(_NpyStream(fh, f"{self.path}[data]").dtype, f"{self.path}[data]", "values")
                with zf.open("indices.npy") as fh:
                    ind = _NpyStream(fh, f"{self.path}[indices]")
                    _check_integer(ind.dtype, ind.name, "column indices")
                with zf.open("indptr.npy") as fh:  # only the header and the first entry are read
                    ptr = _NpyStream(fh, f"{self.path}[indptr]")
                    _check_integer(ptr.dtype, ptr.name, "row pointers")
                    if ptr.n_rows != self.n_rows + 1:
                        raise InputError(f"{self.path}: indptr has {ptr.n_rows} entries, expected {self.n_rows + 1}.")
        elif "X" in names:
            self.sparse = False
            with zipfile.ZipFile(self.path) as zf, zf.open("X.npy") as fh:
                xs = _NpyStream(fh, f"{self.path}[X]")
            if len(xs.shape) != 2:
                raise InputError(f"{self.path}[X]: must be 2-D (rows x features), got shape {xs.shape}.")
            _check_numeric(xs.dtype, f"{self.path}[X]", "features")
            self.n_rows, self.n_features = xs.n_rows, xs.shape[1]
        else:
            raise InputError(f"{self.path}: expected members X and y (np.savez) or indptr, indices, data, shape "
                             f"(scipy.sparse.save_npz), got {sorted(names)}.")
        if self.labels is None and "y" not in names:
            raise InputError(f"{self.path}: has no 'y' member; give the labels' .npy file (labels= in Python, "
                             "--labels on the command line).")
        with zipfile.ZipFile(self.path) as zf, self._labels_stream(zf) as ys:
            _check_numeric(ys.dtype, ys.name, "labels")
            _check_labels_len(ys.n_rows, self.n_rows, str(self.path))

    class _Opened:
        def __init__(self, opener, name):
            self.opener, self.name = opener, name

        def __enter__(self) -> _NpyStream:
            self.fh = self.opener()
            try:
                return _NpyStream(self.fh, self.name)
            except BaseException:
                self.fh.close()
                raise

        def __exit__(self, *exc):
            self.fh.close()

    def _labels_stream(self, zf: zipfile.ZipFile) -> "_Opened":
        if self.labels is not None:
            return self._Opened(lambda: open(self.labels, "rb"), str(self.labels))
        return self._Opened(lambda: zf.open("y.npy"), f"{self.path}[y]")

    def chunks(self):
        with zipfile.ZipFile(self.path) as zf, self._labels_stream(zf) as ys:
            if not self.sparse:
                with zf.open("X.npy") as fh:
                    xs = _NpyStream(fh, f"{self.path}[X]")
                    while xs.pos < xs.n_rows:
                        first = xs.pos
                        yield _finite_block(str(self.path), xs.read(self.chunk_rows), ys.read(self.chunk_rows), first)
                return
            with zf.open("indptr.npy") as fp, zf.open("indices.npy") as fi, zf.open("data.npy") as fd:
                ptr = _NpyStream(fp, f"{self.path}[indptr]")
                ind = _NpyStream(fi, f"{self.path}[indices]")
                dat = _NpyStream(fd, f"{self.path}[data]")
                if ptr.n_rows != self.n_rows + 1:
                    raise InputError(f"{self.path}: indptr has {ptr.n_rows} entries, expected {self.n_rows + 1}.")
                prev = ptr.read(1).astype(np.int64)
                if prev[0] != 0:
                    raise InputError(f"{self.path}: indptr must start at 0, got {prev[0]}.")
                while ptr.pos < ptr.n_rows:
                    p = np.concatenate([prev, ptr.read(self.chunk_rows).astype(np.int64)])
                    prev = p[-1:]
                    nnz = int(p[-1] - p[0])
                    if nnz < 0 or np.any(np.diff(p) < 0):
                        raise InputError(f"{self.path}: indptr must be non-decreasing.")
                    idx, val = ind.read(nnz), dat.read(nnz)
                    if idx.shape[0] != nnz or val.shape[0] != nnz:
                        raise InputError(f"{self.path}: indices/data end before indptr says they do.")
                    rows, first = len(p) - 1, ptr.pos - len(p)  # rows [first, first + rows), counting from 0
                    if idx.size and (idx.min() < 0 or idx.max() >= self.n_features):
                        raise InputError(f"{self.path}: column indices must lie in [0, {self.n_features}), got "
                                         f"[{idx.min()}, {idx.max()}] in rows {first}..{first + rows - 1} "
                                         f"(counting from 0).")
                    X = sp.csr_matrix((val, idx, p - p[0]), shape=(rows, self.n_features))
                    yield _finite_block(str(self.path), X, ys.read(rows), first)


# ---------------------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------------------
class HDF5Dataset(Dataset):
    """Datasets of an HDF5 file: ``x`` (N x d, or a CSR group) and ``y`` (N, ...), read in row slices.

    Parameters
    ----------
    path : str or os.PathLike
    x, y : str
        Names of the features and labels (default ``"X"`` and ``"y"``).  A CSR
        group holds datasets ``data``, ``indices``, ``indptr`` and a ``shape``
        attribute (or dataset).
    chunk_rows : int
        Rows per block.
    """

    format = "hdf5"

    def __init__(self, path, *, x: str = "X", y: str = "y", chunk_rows: int = CHUNK_ROWS) -> None:
        import h5py

        super().__init__(_existing(path))
        self.x, self.y = x, y
        self.chunk_rows = _check_positive("chunk_rows", chunk_rows)
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise InputError(f"{self.path}: not a readable HDF5 file ({exc}).") from exc
        with f:
            names = sorted(f.keys())
            for n in (x, y):
                if n not in f:
                    raise InputError(f"{self.path}: has no dataset {n!r}; it holds {names}.")
            X, Y = f[x], f[y]
            if not isinstance(Y, h5py.Dataset):
                raise InputError(f"{self.path}: {y!r} must be a dataset of labels, got a {type(Y).__name__}.")
            if not Y.shape:  # a scalar (or empty) dataset
                raise InputError(f"{self.path}: {y!r} must be an array of one label per row, got shape {Y.shape}.")
            _check_numeric(Y.dtype, str(self.path), f"labels in {y!r}")
            if isinstance(X, h5py.Group):
                need = {"data", "indices", "indptr"}
                if not need <= set(X.keys()) or ("shape" not in X.attrs and "shape" not in X):
                    raise InputError(f"{self.path}: group {x!r} must hold datasets data, indices, indptr and a "
                                     f"shape attribute (CSR), got {sorted(X.keys())}.")
                for k in sorted(need):
                    if not isinstance(X[k], h5py.Dataset) or X[k].shape is None or len(X[k].shape) != 1:
                        raise InputError(f"{self.path}: {x}/{k} must be a 1-D dataset, got "
                                         f"{getattr(X[k], 'shape', type(X[k]).__name__)}.")
                _check_numeric(X["data"].dtype, str(self.path), f"values in {x}/data")
                _check_integer(X["indices"].dtype, str(self.path), f"column indices in {x}/indices")
                _check_integer(X["indptr"].dtype, str(self.path), f"row pointers in {x}/indptr")
                shape = X.attrs["shape"] if "shape" in X.attrs else X["shape"]
                shape = shape[()] if isinstance(shape, h5py.Dataset) else shape
                self.sparse = True
                self.n_rows, self.n_features = _csr_shape(shape, f"{self.path}: {x}/shape")
                # Metadata and two entries only: a full scan of indptr is left to chunks(), block by block.
                ptr, nnz = X["indptr"], X["indices"].shape[0]
                if X["data"].shape[0] != nnz:
                    raise InputError(f"{self.path}: {x}/data has {X['data'].shape[0]} entries but {x}/indices has "
                                     f"{nnz}; expected one index per value.")
                if ptr.shape[0] != self.n_rows + 1:
                    raise InputError(f"{self.path}: {x}/indptr has {ptr.shape[0]} entries, expected "
                                     f"{self.n_rows + 1} (rows + 1).")
                first, last = int(ptr[0]), int(ptr[-1])
                if first != 0 or not 0 <= last <= nnz:
                    raise InputError(f"{self.path}: {x}/indptr must run from 0 to at most {nnz} (the stored "
                                     f"values), got {first}..{last}.")
            else:
                if not isinstance(X, h5py.Dataset):
                    raise InputError(f"{self.path}: {x!r} must be a 2-D dataset or a CSR group, got a "
                                     f"{type(X).__name__}.")
                if X.shape is None or len(X.shape) != 2:
                    raise InputError(f"{self.path}: {x!r} must be 2-D (rows x features), got shape {X.shape}.")
                _check_numeric(X.dtype, str(self.path), f"features in {x!r}")
                self.sparse = False
                self.n_rows, self.n_features = X.shape
            _check_labels_len(Y.shape[0], self.n_rows, f"{self.path}")

    def chunks(self):
        import h5py

        with h5py.File(self.path, "r", locking=False) as f:
            X, Y = f[self.x], f[self.y]
            n, step = self.n_rows, self.chunk_rows
            for a in range(0, n, step):
                b = min(n, a + step)
                if self.sparse:
                    p = X["indptr"][a: b + 1].astype(np.int64)
                    if np.any(np.diff(p) < 0):
                        raise InputError(f"{self.path}: {self.x}/indptr must be non-decreasing, got a decrease in "
                                         f"rows {a}..{b - 1}.")
                    idx, val = X["indices"][p[0]: p[-1]], X["data"][p[0]: p[-1]]
                    if idx.size and (idx.min() < 0 or idx.max() >= self.n_features):
                        raise InputError(f"{self.path}: {self.x}/indices must lie in [0, {self.n_features}), got "
                                         f"[{idx.min()}, {idx.max()}] in rows {a}..{b - 1} (counting from 0).")
                    yield _finite_block(str(self.path), sp.csr_matrix((val, idx, p - p[0]),
                                                                      shape=(b - a, self.n_features)), Y[a:b], a)
                else:
                    yield _finite_block(str(self.path), X[a:b], Y[a:b], a)


# ---------------------------------------------------------------------------------------
# opening and batching
# ---------------------------------------------------------------------------------------
def open_dataset(path, format: str | None = None, *, labels=None, n_features: int | None = None,
                 zero_based: bool = False, x: str = "X", y: str = "y", chunk_rows: int = CHUNK_ROWS,
                 block_bytes: int = BLOCK_BYTES) -> Dataset:
    """Open a data file for streaming (see the module docstring for the formats).

    Parameters
    ----------
    path : str or os.PathLike
    format : {"svmlight", "hdf5", "npy", "npz"}, optional
        Inferred from the extension when omitted (:data:`EXTENSIONS`).
    labels : str or os.PathLike, optional
        A labels ``.npy`` (for ``.npy`` features, and CSR ``.npz`` without a ``y`` member).
    n_features : int, optional
        svmlight: the width of X (else the file is scanned once).  Other formats
        record it; if given, it is checked.
    zero_based : bool
        svmlight: indices start at 0 (default: one-based).
    x, y : str
        HDF5: dataset names.
    chunk_rows, block_bytes : int
        Block sizes (rows for array formats, bytes of text for svmlight).

    Returns
    -------
    Dataset
    """
    fmt = infer_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if fmt == "svmlight":
        ds: Dataset = SvmlightDataset(path, n_features=n_features, zero_based=zero_based, block_bytes=block_bytes)
    elif fmt == "hdf5":
        ds = HDF5Dataset(path, x=x, y=y, chunk_rows=chunk_rows)
    elif fmt == "npy":
        ds = NpyDataset(path, labels=labels, chunk_rows=chunk_rows)
    else:
        ds = NpzDataset(path, labels=labels, chunk_rows=chunk_rows)
    if fmt != "svmlight" and n_features is not None and ds.n_features != n_features:
        raise InputError(f"{path}: X has {ds.n_features} features, expected {n_features}.")
    return ds


def _concat(parts: list):
    if len(parts) == 1:
        return parts[0]
    if sp.issparse(parts[0]):
        return sp.vstack(parts, format="csr")
    return np.concatenate(parts)


def batches(dataset, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0, skip: int = 0,
            drop_last: bool = False) -> Iterator[tuple[object, np.ndarray]]:
    """Minibatches ``(X, y)`` of ``batch_size`` rows streamed from ``dataset``.

    Parameters
    ----------
    dataset : Dataset or iterable of (X, y) blocks
    batch_size : int
    shuffle_buffer : int
        0 or 1: rows in file order.  Otherwise rows pass through a buffer of about
        this many rows: whenever it is full it is shuffled, the first half goes
        out as batches and the rest waits to be mixed with what is read next
        (as ``tf.data``'s shuffle buffer, a block at a time).  RAM holds the
        buffer plus one block read from the file, a few times over while they
        are joined and shuffled (see the module docstring).  Seeded: the same
        seed gives the same batches.
    seed : int or sequence of int
        Seeds the shuffle (e.g. ``(seed, epoch)``).
    skip : int
        Batches to drop from the start (resuming part-way through an epoch; the
        data is still read).
    drop_last : bool
        Drop a final batch smaller than ``batch_size``.

    Yields
    ------
    (X, y)
        X a CSR matrix or ndarray of at most ``batch_size`` rows, y its labels.
    """
    batch_size = _check_positive("batch_size", batch_size)
    for name, value in (("shuffle_buffer", shuffle_buffer), ("skip", skip)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
    # Checked here, at the call; the generator below runs only when iterated.
    return _batches(dataset, batch_size, shuffle_buffer, seed, int(skip), drop_last)


def _checked_chunks(dataset):
    """``dataset.chunks()``, with a file damaged past its header (a zip member failing its CRC or inflation,
    an HDF5 chunk failing its filter, a read error) told as an InputError naming the file.

    A zip member's CRC is checked when the member has been read to its end: the rows of a damaged
    compressed member before that point have been handed out already.
    """
    it = dataset.chunks()
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except OocnetError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise InputError(f"{getattr(dataset, 'path', dataset)}: cannot be read: it is damaged or unreadable "
                             f"({type(exc).__name__}: {exc}).") from exc
        yield item


def _batches(dataset, batch_size: int, shuffle_buffer: int, seed, skip: int, drop_last: bool):
    """The generator behind :func:`batches` (arguments checked)."""
    rng = np.random.default_rng(seed)
    shuffle = shuffle_buffer > 1
    xs: list = []
    ys: list = []
    held = 0
    emitted = 0

    def emit(X, y, n_out):
        nonlocal emitted
        for a in range(0, n_out, batch_size):
            b = min(n_out, a + batch_size)
            if b - a < batch_size and drop_last:
                return
            emitted += 1
            if emitted > skip:
                yield X[a:b], y[a:b]

    source = _checked_chunks(dataset) if isinstance(dataset, Dataset) else iter(dataset)
    for X, y in source:
        xs.append(X)
        ys.append(np.asarray(y))
        held += X.shape[0]
        if shuffle:
            if held < shuffle_buffer + batch_size:
                continue
            X, y = _concat(xs), np.concatenate(ys)
            perm = rng.permutation(held)
            X, y = X[perm], y[perm]
            n_out = max(batch_size, (held - shuffle_buffer // 2) // batch_size * batch_size)
        else:
            if held < batch_size:
                continue
            X, y = _concat(xs), np.concatenate(ys)
            n_out = held // batch_size * batch_size
        yield from emit(X, y, n_out)
        xs, ys = [X[n_out:]], [y[n_out:]]
        held -= n_out
    if held:
        X, y = _concat(xs), np.concatenate(ys)
        if shuffle:
            perm = rng.permutation(held)
            X, y = X[perm], y[perm]
        yield from emit(X, y, held)


# ---------------------------------------------------------------------------------------
# synthetic corpora
# ---------------------------------------------------------------------------------------
def wordfreq_vocabulary(n_words: int, languages: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The ``n_words`` most frequent words across languages, with frequencies, from ``wordfreq``.

    Needs the optional ``wordfreq`` package (``pip install "oocnet[words]"``).
    Frequencies of a word in several languages are summed (each language
    weighs the same), then words are ranked by it.

    Returns
    -------
    words : list of str
        Most frequent first.
    freqs : ndarray of float64
        Their frequencies, normalised to sum to 1.
    """
    try:
        import wordfreq
    except ImportError as exc:
        raise ConfigError('wordfreq is not installed; install the extra with pip install "oocnet[words]".') from exc
    langs = languages or sorted(wordfreq.available_languages(wordlist="best"))
    total: dict[str, float] = {}
    for lang in langs:
        for word, f in wordfreq.get_frequency_dict(lang, wordlist="best").items():
            total[word] = total.get(word, 0.0) + f
    top = sorted(total.items(), key=lambda kv: -kv[1])[:n_words]
    words = [w for w, _ in top]
    freqs = np.array([f for _, f in top], dtype=np.float64)
    return words, freqs / freqs.sum()


@dataclass
class ZipfCorpus:
    """Bag-of-words classification over ``n_words`` words with a planted class signal.

    Each example draws its class from priors proportional to
    ``1 / (1 + c) ** class_exponent`` (the majority class is a real baseline),
    then ``words_per_example`` words: each is, with probability ``signal_rate``,
    one of its class's ``signal_words`` indicative words (disjoint sets of
    mid-frequency words), otherwise a draw from the background distribution --
    Zipf(``exponent``) over ranks (word id = frequency rank), or ``frequencies``
    when given (e.g. real words from :func:`wordfreq_vocabulary`).  X holds the
    counts.  Nothing V-sized is allocated unless ``frequencies`` is given.

    Parameters
    ----------
    n_words : int
    n_classes : int
    words_per_example : int
    exponent : float
        Zipf exponent (> 1) of the background.
    signal_words : int
        Indicative words per class.
    signal_rate : float
        Probability that a word of an example is one of its class's indicative words.
    class_exponent : float
    seed : int
        Seeds the choice of indicative words.
    frequencies : ndarray, optional
        Background word probabilities (length ``n_words``, most frequent first).
    """

    n_words: int
    n_classes: int = 16
    words_per_example: int = 20
    exponent: float = 1.1
    signal_words: int = 32
    signal_rate: float = 0.1
    class_exponent: float = 1.0
    seed: int = 0
    frequencies: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("n_words", "n_classes", "words_per_example", "signal_words"):
            _check_positive(name, getattr(self, name))
        if not self.exponent > 1:
            raise ConfigError(f"exponent must be > 1, got {self.exponent!r}.")
        if not 0 <= self.signal_rate <= 1:
            raise ConfigError(f"signal_rate must lie in [0, 1], got {self.signal_rate!r}.")
        need = self.n_classes * self.signal_words
        lo = min(100, self.n_words // 10)
        if self.n_words < lo + need:
            raise ConfigError(f"n_words must be at least {lo + need} for {self.n_classes} classes of "
                              f"{self.signal_words} indicative words, got {self.n_words}.")
        hi = max(lo + need, min(self.n_words, 100_000))
        rng = np.random.default_rng([self.seed, 7])
        self.signal = (lo + rng.choice(hi - lo, size=need, replace=False)).reshape(self.n_classes, self.signal_words)
        p = 1.0 / (1.0 + np.arange(self.n_classes)) ** self.class_exponent
        self.priors = p / p.sum()
        if self.frequencies is not None:
            f = np.asarray(self.frequencies, dtype=np.float64)
            if f.shape != (self.n_words,) or not np.all(f >= 0) or f.sum() <= 0:
                raise ConfigError(f"frequencies must be {self.n_words} non-negative numbers, got shape {f.shape}.")
            self._cdf = np.cumsum(f / f.sum())
        else:
            self._cdf = None

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent class (in expectation)."""
        return float(self.priors.max())

    def _background(self, rng, n: int) -> np.ndarray:
        if self._cdf is not None:
            return np.minimum(np.searchsorted(self._cdf, rng.random(n), side="right"), self.n_words - 1)
        out = np.empty(0, dtype=np.int64)
        while out.size < n:
            draw = rng.zipf(self.exponent, size=max(1024, int((n - out.size) * 1.5)))
            out = np.concatenate([out, draw[draw <= self.n_words] - 1])
        return out[:n]

    def sample(self, n: int, seed) -> tuple[sp.csr_matrix, np.ndarray]:
        """``n`` examples: X (n x n_words CSR of counts, float32) and y (n,) int64 labels."""
        rng = np.random.default_rng(seed)
        L = self.words_per_example
        y = rng.choice(self.n_classes, size=n, p=self.priors)
        ids = self._background(rng, n * L).reshape(n, L)
        mask = rng.random((n, L)) < self.signal_rate
        picks = self.signal[np.repeat(y, L).reshape(n, L), rng.integers(0, self.signal_words, size=(n, L))]
        ids[mask] = picks[mask]
        rows = np.repeat(np.arange(n), L)
        X = sp.csr_matrix((np.ones(n * L, dtype=np.float32), (rows, ids.reshape(-1))), shape=(n, self.n_words))
        X.sum_duplicates()
        return X, y.astype(np.int64)

    def chunks(self, n: int, seed, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
        """``n`` examples in blocks of ``chunk_rows`` (block ``i`` seeded by ``(seed, i)``)."""
        for i, a in enumerate(range(0, n, chunk_rows)):
            yield self.sample(min(chunk_rows, n - a), [*np.atleast_1d(seed).tolist(), i])

    def write_svmlight(self, path, n: int, seed, *, zero_based: bool = False, chunk_rows: int = CHUNK_ROWS,
                       progress=None) -> None:
        """Write ``n`` examples to an svmlight file, a block at a time (``progress(rows)`` after each)."""
        tmp = Path(os.fspath(path) + ".tmp")
        first = True
        for X, y in self.chunks(n, seed, chunk_rows):
            write_svmlight(tmp, X, y, zero_based=zero_based, append=not first)
            first = False
            if progress is not None:
                progress(X.shape[0])
        os.replace(tmp, path)  # a half-written file is never taken for a finished one


__all__ = [
    "Dataset",
    "SvmlightDataset",
    "NpyDataset",
    "NpzDataset",
    "HDF5Dataset",
    "open_dataset",
    "batches",
    "infer_format",
    "write_svmlight",
    "wordfreq_vocabulary",
    "ZipfCorpus",
    "FORMATS",
    "EXTENSIONS",
]
