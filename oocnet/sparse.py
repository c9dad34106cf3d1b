"""Sparse batches for an embedding layer: ids or CSR in, touched rows and a remapped CSR out.

A batch over a vocabulary of V words is a B x V CSR matrix (one-hot, multi-hot
bags, weighted counts such as tf-idf).  :func:`as_csr` also accepts integer ids:
a 1-D array (one id per example), a 2-D integer array (k ids per example) or a
list of id lists (ragged bags); each id counts 1.  An integer array of width V
whose entries are mostly 0 is refused: it is a one-hot or count matrix, which
goes as floats or as a sparse matrix.

:func:`prepare` canonicalises the CSR (duplicate ids in a row are summed,
indices sorted -- on a copy, the caller's matrix is not changed) and finds the
sorted unique rows the batch touches.  The column indices are then remapped
onto those rows with the inverse of ``np.unique``, giving a B x n_touched CSR:
nothing V-sized is ever allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._arrays import check_finite
from .errors import InputError


def _check_ids(arr: np.ndarray, n_cols: int, what: str) -> np.ndarray:
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be integer ids in [0, {n_cols}), got dtype {arr.dtype}.")
    if arr.size:
        # Range-checked in the ids' own type: casting first would wrap uint64 ids >= 2**63.
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= n_cols:
            raise InputError(f"{what} must lie in [0, {n_cols}), got ids in [{lo}, {hi}].")
    return arr.astype(np.int64, copy=False)


def _raw(X, n_cols: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated ``(data, indices, indptr, n_rows)`` of a batch, in CSR layout (not canonicalised)."""
    dtype = np.dtype(dtype)
    if sp.issparse(X):
        if X.ndim != 2 or X.shape[1] != n_cols:
            raise InputError(f"a sparse batch must have {n_cols} columns (the vocabulary size), got shape {X.shape}.")
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) or np.issubdtype(X.dtype, np.complexfloating):
            raise InputError(f"a sparse batch must hold real numbers, got dtype {X.dtype}.")
        csr = X if X.format == "csr" else sp.csr_matrix(X)
        indptr = np.asarray(csr.indptr)
        nnz = int(indptr[-1]) if indptr.ndim == 1 and indptr.size else -1
        if (indptr.ndim != 1 or indptr.size != X.shape[0] + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
                or nnz > min(np.size(csr.indices), np.size(csr.data))):
            raise InputError(f"a sparse batch's CSR structure is malformed: indptr must hold rows + 1 = "
                             f"{X.shape[0] + 1} offsets from 0, never decreasing, up to at most the "
                             f"{np.size(csr.indices)} indices; got {indptr.size} offsets ending at {nnz}.")
        # Entries past indptr[-1] (scipy allows them) are no part of the matrix, as X.toarray() shows.
        data, indices = np.asarray(csr.data)[:nnz], np.asarray(csr.indices)[:nnz]
        if not csr.has_canonical_format or not data.all() or nnz < np.size(csr.indices):
            # A stored zero (or duplicates summing to zero) is no entry: it must not make a row
            # "touched" (lazy optimizers move touched rows only) -- X.toarray() is what counts.
            csr = sp.csr_matrix((data, indices, indptr), shape=csr.shape, copy=True)
            csr.sum_duplicates()
            csr.eliminate_zeros()
            data, indices, indptr = csr.data, csr.indices, csr.indptr
        indices = _check_ids(np.asarray(indices), n_cols, "ids")
        src, indptr, n = np.asarray(data), np.asarray(indptr, dtype=np.int64), X.shape[0]
    elif isinstance(X, (list, tuple)) and (len(X) == 0 or isinstance(X[0], (list, tuple, np.ndarray))):
        rows = []
        for i, r in enumerate(X):
            try:
                arr = np.asarray(r)
            except (TypeError, ValueError):  # e.g. a row holding a list among its ids
                arr = np.asarray(r, dtype=object)
            if arr.ndim != 1 or arr.dtype == object:
                raise InputError(f"row {i} of an id-list batch must be a flat list of integer ids, got {r!r:.80}.")
            rows.append(_check_ids(arr, n_cols, f"ids in row {i}"))
        n = len(rows)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        src = np.ones(indices.size, dtype=dtype)
    else:
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise InputError(f"a batch must be a sparse matrix, an array or a list of id lists, got {type(X).__name__}.") from exc
        if arr.dtype == object:
            if isinstance(X, (list, tuple)):
                raise InputError("a batch given as nested lists must be a list of id lists (rows of integer ids).")
            raise InputError(f"a batch must be a sparse matrix, an array or a list of id lists, got {type(X).__name__}.")
        if np.issubdtype(arr.dtype, np.integer) and arr.ndim in (1, 2):
            if arr.ndim == 2 and arr.shape[1] == n_cols > 2 and 2 * np.count_nonzero(arr == 0) > arr.size:
                # k = V ids a row, most of them id 0: surely a one-hot or count matrix given as ints
                raise InputError(
                    f"an integer array of shape {arr.shape} is read as {n_cols} ids a row, and most of these "
                    f"would be id 0: it looks like a one-hot or count matrix (B x V). Pass it as floats "
                    f"(X.astype(float)) or as scipy.sparse.csr_matrix(X); ids go as an array (B, k) or a list of lists."
                )
            ids = _check_ids(arr, n_cols, "ids")
            ids = ids[:, None] if ids.ndim == 1 else ids
            n, k = ids.shape
            indices, indptr = ids.reshape(-1), np.arange(0, n * k + 1, max(k, 1) if n * k else 1, dtype=np.int64)
            if k == 0:
                indptr = np.zeros(n + 1, dtype=np.int64)
            src = np.ones(indices.size, dtype=dtype)
        elif np.issubdtype(arr.dtype, np.floating) and arr.ndim == 2:
            if arr.shape[1] != n_cols:
                raise InputError(f"a dense batch must have {n_cols} columns, got shape {arr.shape}.")
            csr = sp.csr_matrix(arr)
            src, indices, indptr, n = csr.data, csr.indices.astype(np.int64), csr.indptr.astype(np.int64), arr.shape[0]
        else:
            raise InputError(
                f"a batch must be a sparse matrix, integer ids (1-D or 2-D), a float array of width {n_cols}, "
                f"or a list of id lists; got an array of dtype {arr.dtype} and shape {arr.shape}."
            )
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond dtype's range become inf: named below
        data = src.astype(dtype, copy=False)
    check_finite(src, data, "the batch")
    return data, indices, indptr, n


def as_csr(X, n_cols: int, dtype=np.float32) -> sp.csr_matrix:
    """Convert a batch to a canonical ``(rows, n_cols)`` CSR matrix of ``dtype``.

    Parameters
    ----------
    X : scipy.sparse matrix/array, ndarray or list of lists
        A sparse matrix of width ``n_cols``; a float ndarray of width ``n_cols``
        (dense features); an integer ndarray of ids, 1-D (one per row) or 2-D (k per
        row); or a list of id lists.
    n_cols : int
        The vocabulary size V.
    dtype : numpy dtype
        Type of the values.

    Returns
    -------
    scipy.sparse.csr_matrix
        With sorted indices and duplicates summed; never the caller's object.
    """
    data, indices, indptr, n = _raw(X, n_cols, dtype)
    csr = sp.csr_matrix((data.copy(), indices.copy(), indptr.copy()), shape=(n, n_cols))
    csr.sum_duplicates()  # also sorts indices
    return csr


@dataclass
class SparseBatch:
    """A batch ready for an embedding layer.

    Attributes
    ----------
    rows : ndarray of int64
        Sorted unique ids the batch touches.
    local : scipy.sparse.csr_matrix
        The batch with columns remapped onto ``rows``: shape (B, len(rows)).
    n_cols : int
        The vocabulary size V.
    held : dict
        Gathered rows kept between forward and backward, by parameter name
        (``{"W": rows of W}``); the model gives back whatever is left after a step.
    """

    rows: np.ndarray
    local: sp.csr_matrix
    n_cols: int
    held: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, V), as the batch would be densely."""
        return (self.local.shape[0], self.n_cols)


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)`` for 1-D int64 ids, about twice as fast (one argsort)."""
    if ids.size == 0:
        return ids.astype(np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # radix-like for ints: ~2.5x faster than the default here
    ordered = ids[order]
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(ordered.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def prepare(X, n_cols: int, dtype=np.float32) -> SparseBatch:
    """Validate ``X`` (see :func:`as_csr`) and remap it onto the rows it touches.

    Duplicate or unsorted ids within a row need no canonicalising here: the
    products below sum duplicate entries, which is what repeated ids mean.
    The caller's matrix is never modified.
    """
    data, indices, indptr, n = _raw(X, n_cols, dtype)
    rows, inverse = unique_inverse(indices)
    local = sp.csr_matrix((data, inverse, indptr), shape=(n, rows.size))
    return SparseBatch(rows.astype(np.int64, copy=False), local, n_cols)


__all__ = ["as_csr", "prepare", "unique_inverse", "SparseBatch"]
