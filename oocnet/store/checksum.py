"""Row checksums that a commit can update in time proportional to what changed.

A block's checksum is the sum, modulo 2**64, of one 64-bit hash per row::

    h(row r) = mix( sum_j word_j * M_j  +  (r + 1) * M_row )      (mod 2**64)

where ``word_j`` are the row's bytes read as little-endian uint32 words (the row
padded with zeros to a multiple of 4 bytes), ``M_j`` and ``M_row`` fixed odd
64-bit constants, and ``mix`` the SplitMix64 finaliser.  Because the block sum
is a plain sum of per-row terms, a commit updates it with the hashes of the
rows it changed -- subtracting their old images (taken from the rollback
journal) and adding their new values -- instead of re-reading the block.  The
row index inside the hash makes swapped rows differ; ``mix`` makes
compensating changes across rows differ.  Any change of a single word changes
the hash (the multipliers are odd).  It detects corruption, it is not a
cryptographic digest.

Everything here is vectorised numpy over blocks of rows.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ROW = np.uint64(0xD6E8FEB86659FD93)
_multipliers: dict[int, np.ndarray] = {}


def _mult(n_words: int) -> np.ndarray:
    m = _multipliers.get(n_words)
    if m is None:
        idx = np.arange(1, n_words + 1, dtype=np.uint64)
        m = _mix(idx * _GOLDEN) | np.uint64(1)  # odd: a changed word always changes the sum
        _multipliers[n_words] = m
    return m


def _mix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def row_hashes(block: np.ndarray, first_row: int) -> np.ndarray:
    """uint64 hash of each row of ``block`` (rows ``first_row``, ``first_row + 1``, ...)."""
    return row_hashes_at(block, np.arange(first_row, first_row + block.shape[0], dtype=np.uint64))


def row_hashes_at(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """uint64 hash of each row of ``block``, whose row ids are ``rows``."""
    n = block.shape[0]
    raw = np.ascontiguousarray(block).reshape(n, -1).view(np.uint8)
    width = raw.shape[1]
    if width % 4:
        padded = np.zeros((n, width + (-width) % 4), dtype=np.uint8)
        padded[:, :width] = raw
        raw = padded
    words = raw.view("<u4")
    with np.errstate(over="ignore"):
        acc = words.astype(np.uint64) @ _mult(words.shape[1]) if n else np.zeros(0, np.uint64)
        acc = acc + (np.asarray(rows, dtype=np.uint64) + np.uint64(1)) * _ROW
    return _mix(acc)


def zero_rows_sum_at(rows: np.ndarray) -> int:
    """Sum (mod 2**64) of the hashes of the rows ``rows`` whose bytes are all zero (no data needed)."""
    with np.errstate(over="ignore"):
        r = np.asarray(rows, dtype=np.uint64) + np.uint64(1)  # a zero row's words add nothing
        return int(_mix(r * _ROW).sum(dtype=np.uint64))


def zero_rows_sum(start: int, stop: int, chunk: int = 1 << 20) -> int:
    """:func:`zero_rows_sum_at` of rows ``[start, stop)``, in chunks (bounded memory)."""
    total = 0
    for a in range(start, stop, chunk):
        total = add(total, zero_rows_sum_at(np.arange(a, min(stop, a + chunk), dtype=np.uint64)))
    return total


def block_sum(block: np.ndarray, first_row: int) -> int:
    """Sum (mod 2**64) of the row hashes of ``block``."""
    return int(row_hashes(block, first_row).sum(dtype=np.uint64))


def sum_at(block: np.ndarray, rows: np.ndarray) -> int:
    """Sum (mod 2**64) of the row hashes of ``block`` whose row ids are ``rows``."""
    return int(row_hashes_at(block, rows).sum(dtype=np.uint64))


def add(a: int, b: int) -> int:
    """a + b mod 2**64."""
    return (a + b) % 2**64


def sub(a: int, b: int) -> int:
    """a - b mod 2**64."""
    return (a - b) % 2**64
