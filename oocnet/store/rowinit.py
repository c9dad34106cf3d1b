"""Seeded initial values that a store can recompute for any set of rows.

A parameter larger than RAM is initialised in row chunks whose size depends on
the store, and a disk store may not write the initial values at all: rows
nobody has written yet are *computed* when read (see ``lazy`` in
:mod:`oocnet.store.durable`).  Both need the initial value of element ``j`` of
row ``r`` to be a function of ``(seed, key, r, j)`` alone, cheap to evaluate
for a scattered set of rows.  Each element is one SplitMix64 output::

    w(r, i) = mix(k + (r * ceil(row_size / 2) + i + 1) * golden)      (mod 2**64)
    u(r, j) = (half j % 2 of w(r, j // 2) + 1/2) / 2**32

where ``k`` is a 64-bit hash of ``(seed, key)``, ``golden`` the 64-bit golden
ratio, ``mix`` SplitMix64's finaliser (so ``w`` is the sequence SplitMix64
generates, addressed directly by position) and the low half comes first.  Each
64-bit output gives two 32-bit uniforms: computing 675 scattered rows of 128
values costs ~0.1 ms in numpy; a ``pread`` of each would cost ~2 us a row.

A :class:`RowInit` is what a store is given: call it with ``(start, stop)`` for
a row range, :meth:`RowInit.at` for a set of rows, and :attr:`RowInit.spec` is
the JSON a store records to rebuild it with :func:`from_spec` after a reopen.
The numbers are part of the stores' format (``SPEC_VERSION``): they must not
change for a given spec.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np

from ..errors import StoreFormatError
from .checksum import mix

SPEC_VERSION = 2  # 1: development versions (one 53-bit uniform per SplitMix64 output)
#: Elements computed per piece by RowInit.at (its temporaries: three arrays of this many 8-byte values).
_PIECE = 1 << 18

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _stream_key(seed: int, key: str) -> np.uint64:
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _hashes(seed: int, key: str, words: int, rows: np.ndarray) -> np.ndarray:
    """SplitMix64 outputs ``(len(rows), words)`` (uint64): word ``w`` of row ``r`` is output ``r * words + w + 1``."""
    z = np.empty((rows.size, words), dtype=np.uint64)
    np.multiply(rows.astype(np.uint64)[:, None], np.uint64(words), out=z)
    t = np.empty_like(z)
    with np.errstate(over="ignore"):
        z += np.arange(1, words + 1, dtype=np.uint64)
        z *= _GOLDEN
        z += _stream_key(seed, key)
    return mix(z, t)


def uniform_at(seed: int, key: str, row_size: int, rows: np.ndarray) -> np.ndarray:
    """U(0, 1) float64 values, shape ``(len(rows), row_size)``, of rows ``rows`` of parameter ``key``.

    Element ``j`` is half ``j % 2`` (low 32 bits first) of word ``j // 2``:
    ``u = (half + 0.5) / 2**32``, never exactly 0 or 1.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    words = (row_size + 1) // 2
    z = _hashes(seed, key, words, rows).astype("<u8", copy=False)  # little-endian: the low half first
    halves = z.view("<u4").reshape(rows.size, 2 * words)[:, :row_size]
    u = np.empty((rows.size, row_size), dtype=np.float64)
    np.add(halves, 0.5, out=u, casting="unsafe")
    u *= 2.0**-32
    return u


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], int(math.prod(shape[1:]))


# Each maps U(0, 1) draws ``u`` (float64) to initial values in place, and returns ``u``.
def _glorot_uniform(u, shape):
    fan_in, fan_out = _fans(shape)
    return _scaled(u, math.sqrt(6.0 / (fan_in + fan_out)))


def _he_uniform(u, shape):
    return _scaled(u, math.sqrt(6.0 / _fans(shape)[0]))


def _scaled(u, a):
    u *= 2.0 * a  # U(-a, a)
    u -= a
    return u


def _normal(u, shape):
    # Inverse-CDF keeps one uniform per element; u is never exactly 0 or 1 after the squeeze.
    eps = np.finfo(np.float64).eps
    u *= 1.0 - 2 * eps
    u += eps
    # imported on first use: scipy.special would add ~50 ms to `import oocnet`
    from scipy.special import ndtri

    ndtri(u, out=u)
    u /= math.sqrt(_fans(shape)[1])
    return u


def _uniform(u, shape):
    # Same variance as "normal" (1/row_size) at a fraction of the cost (ndtri is ~5x slower).
    return _scaled(u, math.sqrt(3.0 / _fans(shape)[1]))


#: name -> f(u, shape) mapping U(0, 1) draws to initial values, in place (None: zeros).
DISTRIBUTIONS: dict[str, Callable | None] = {
    "zeros": None,
    "glorot_uniform": _glorot_uniform,
    "he_uniform": _he_uniform,
    "uniform": _uniform,  # U(-a, a) with variance 1/row_size: embedding rows of unit expected norm
    "normal": _normal,  # N(0, 1/row_size)
}


class RowInit:
    """The initial rows of one parameter: ``init(start, stop)`` or ``init.at(rows)``.

    Parameters
    ----------
    name : str
        A key of :data:`DISTRIBUTIONS`, or ``"constant"`` (every element ``value``).
    seed : int
        The model's seed.
    key : str
        The parameter's name (each parameter draws its own stream).
    shape : tuple of int
        The parameter's shape; axis 0 is rows.
    dtype : numpy dtype
        The stored dtype (values are computed in float64 and cast).
    value : float
        The value of ``"constant"`` (``"zeros"`` is the constant 0).
    """

    def __init__(self, name: str, seed: int, key: str, shape: tuple[int, ...], dtype, value: float = 0.0) -> None:
        if name not in DISTRIBUTIONS and name != "constant":
            raise ValueError(f"no initializer named {name!r}")
        fn = DISTRIBUTIONS.get(name)
        self.value = float(value) if name == "constant" else 0.0
        self.name, self.seed, self.key = name, int(seed), str(key)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self._fn = fn
        self._row_size = int(math.prod(self.shape[1:]))

    @property
    def spec(self) -> dict:
        """JSON that :func:`from_spec` turns back into an equal initializer."""
        return {"version": SPEC_VERSION, "name": self.name, "seed": self.seed, "key": self.key,
                "shape": list(self.shape), "dtype": self.dtype.name, "value": self.value}

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Initial values of rows ``rows`` (any order), shape ``(len(rows), *shape[1:])``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        if self._fn is None:  # zeros, constant
            out.fill(self.value)
            return out
        flat = out.reshape(rows.size, self._row_size)
        # In pieces of at most _PIECE elements: bounded temporaries however many rows are asked for.
        per = max(1, _PIECE // self._row_size)
        for a in range(0, rows.size, per):
            r = rows[a : a + per]
            flat[a : a + r.size] = self._fn(uniform_at(self.seed, self.key, self._row_size, r), self.shape)
        return out

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return self.at(np.arange(start, stop, dtype=np.int64))

    def eager(self):
        """The same values as a plain ``init(start, stop)`` callable: a store writes them at creation."""
        return lambda start, stop: self(start, stop)

    def __repr__(self) -> str:
        return f"RowInit({self.name!r}, seed={self.seed}, key={self.key!r}, shape={self.shape})"


def from_spec(spec: object, where: str) -> RowInit:
    """Rebuild a :class:`RowInit` from its :attr:`~RowInit.spec`; ``where`` names it in errors."""
    try:
        if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
            got = spec.get("version") if isinstance(spec, dict) else None
            raise ValueError(f"initializer version {got!r}, but this oocnet computes version {SPEC_VERSION} "
                             f"(a store written by another version cannot be read: recreate it)")
        return RowInit(spec["name"], spec["seed"], spec["key"], tuple(spec["shape"]), spec["dtype"],
                       spec.get("value", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{where}: expected an initializer record, got {spec!r}: {exc}.") from exc


def bits_at(bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Bool per row of ``rows``: its bit in the row bitmap ``bits`` (bit ``r % 8`` of byte ``r // 8``)."""
    return ((bits[rows >> 3] >> (rows & 7).astype(np.uint8)) & 1).astype(bool)


def set_bits(bits: np.ndarray, rows: np.ndarray) -> None:
    """Set the bits of ``rows`` in the row bitmap ``bits`` (repeated rows are fine)."""
    np.bitwise_or.at(bits, rows >> 3, np.uint8(1) << (rows & 7).astype(np.uint8))


def _popcount(bits: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return int(np.bitwise_count(bits).sum(dtype=np.int64))
    total = 0
    for a in range(0, bits.size, 1 << 20):  # bounded temporaries
        total += int(np.unpackbits(bits[a : a + (1 << 20)]).sum(dtype=np.int64))
    return total


class LazyRows:
    """Which rows of a parameter have been written; the others read as ``init``'s values.

    One bit per row (``n_rows / 8`` bytes, bit ``r % 8`` of byte ``r // 8``), so a
    step's lookups and updates cost what the step touches.
    """

    def __init__(self, init: RowInit, n_rows: int, bits: np.ndarray | None = None) -> None:
        self.init, self.n_rows = init, int(n_rows)
        nbytes = (self.n_rows + 7) // 8
        self.bits = np.zeros(nbytes, dtype=np.uint8) if bits is None else bits
        if self.bits.shape != (nbytes,) or self.bits.dtype != np.uint8:
            raise ValueError(f"a bitmap of {self.n_rows} rows has {nbytes} bytes, got {self.bits.shape}")
        tail = self.n_rows % 8
        if tail and self.bits[-1] >> tail:
            raise ValueError("bits set past the last row")
        self.n_written = _popcount(self.bits)
        self.changed = False  # since the last commit

    @property
    def complete(self) -> bool:
        """Every row has been written (reads need no computing)."""
        return self.n_written == self.n_rows

    def written(self, rows: np.ndarray) -> np.ndarray:
        """Bool per row of ``rows``: written."""
        return bits_at(self.bits, rows)

    def _range_bits(self, start: int, stop: int) -> tuple[int, np.ndarray]:
        lo = start >> 3
        flags = np.unpackbits(self.bits[lo : (stop + 7) >> 3], bitorder="little")
        return lo, flags

    def unwritten_in(self, start: int, stop: int) -> np.ndarray:
        """Offsets (from ``start``) of the rows in ``[start, stop)`` not written yet."""
        lo, flags = self._range_bits(start, stop)
        off = start - 8 * lo
        return np.flatnonzero(flags[off : off + stop - start] == 0)

    def mark(self, rows: np.ndarray) -> None:
        """Record rows ``rows`` (unique) as written."""
        new = rows[~self.written(rows)]
        if new.size:
            set_bits(self.bits, new)
            self.n_written += int(new.size)
            self.changed = True

    def mark_range(self, start: int, stop: int) -> None:
        """Record rows ``[start, stop)`` as written."""
        if stop <= start:
            return
        lo, flags = self._range_bits(start, stop)
        off = start - 8 * lo
        seg = flags[off : off + stop - start]
        fresh = int(seg.size - np.count_nonzero(seg))
        if fresh:
            seg[:] = 1
            self.bits[lo : lo + (flags.size // 8)] = np.packbits(flags, bitorder="little")
            self.n_written += fresh
            self.changed = True


__all__ = ["DISTRIBUTIONS", "LazyRows", "RowInit", "SPEC_VERSION", "bits_at", "from_spec", "set_bits",
           "uniform_at"]
