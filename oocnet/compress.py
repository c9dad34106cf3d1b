"""Truncated SVD of stored weight matrices: W (m x n) becomes U (m x r) and V (r x n), W ≈ U V.

N4: "use SVD or alike methods to reduce the parameter size".  :func:`factorize`
replaces a parameter of a store by two factors in the same store (keeping the
original unless asked to drop it), so that a model built with
:class:`~oocnet.FactorizedDense` or :class:`~oocnet.FactorizedEmbedding` under
the same layer name trains the factors from there.

Two methods, one result:

``"exact"``
    W is read whole and decomposed by LAPACK (``scipy.linalg.svd``, gesdd).
    The truncation is the Eckart–Young optimum: ``||W − U V||_F =
    sqrt(Σ_{i>r} σ_i²)``; error and kept energy come from the singular values.
    One pass over W.  Used by ``method="auto"`` when W and the SVD's workspace
    fit the budget.

``"randomized"``
    Halko, Martinsson & Tropp (2011), randomized subspace iteration (their
    Algorithms 4.4 and 5.1), streamed over row blocks of W so that no step
    holds more than the budget:

    1. ``Y = W Ω`` with Ω an n × k Gaussian, k = r + oversample (one pass);
    2. q power iterations, each re-orthonormalised: ``Q ← orth(Y)``,
       ``Z = Wᵀ Q``, ``Y = W orth(Z)`` (two passes each);
    3. ``B = Qᵀ W`` (k × n, one pass); ``B = Ũ Σ Vᵀ`` in RAM; ``U = Q Ũ``.

    The m × k basis lives in the store, under a temporary key, never whole
    in RAM.  It is orthonormalised by TSQR (flat tree): each row block
    ``Y_i = Q_i R_i`` (Householder QR; Q_i is written to the basis), and the
    running k × k factor is folded with the next, ``[R; R_i] = [A_i; B_i] R'``.
    Unrolled backwards, ``Q̂_i = B_i A_{i+1} ⋯ A_last`` make ``Q = diag(Q_i) Q̂``
    orthonormal; the 2k × k factors and the Q̂_i are small and also kept in the
    store, and each Q̂_i is applied as the next pass reads block i, so the
    basis is written once per pass and read once -- never rewritten, and RAM
    holds O(k²) of TSQR whatever the number of blocks.  TSQR is as stable as
    Householder QR whatever the conditioning of Y (power iterations make Y
    badly conditioned, which breaks Cholesky-QR in float32).

    ``||W||_F²`` is accumulated during the first pass (which also checks that
    every value is finite), so the energy kept, ``Σ_{i≤r} σ̃_i² / ||W||_F²``,
    is an *estimate* from the sketch's singular values (a lower bound: σ̃_i ≤
    σ_i).  The relative error is *measured* by one more pass that writes U and
    streams ``||W_i − U_i V||_F²`` (``check_error=True``, the default); with
    ``check_error=False`` it is the estimate ``sqrt(||W||² − Σ_{i≤r} σ̃_i²)``,
    exact in exact arithmetic because ``U V`` is an orthogonal projection of W
    (``QŨ_r (QŨ_r)ᵀ W``), but subject to cancellation when the error is small.

    Passes over W: ``2 q + 2`` (+1 with ``check_error``); in energy mode a
    sketch too narrow for the target is redone twice as wide, and the passes
    add up.  The report says how many were made.

Factors split the singular values evenly: ``U = Ũ_r sqrt(Σ_r)``,
``V = sqrt(Σ_r) V_rᵀ``, so neither factor is much larger than the other --
the best-conditioned start for training both by gradient descent.

Memory: every step of the randomized path holds at most ``budget`` bytes:
two row blocks of W (the next one is read in a background thread while this
one computes), two of the basis, the QR's temporaries, the residual block, and
the n × k and k × n matrices (Ω, Z, B) -- the plan is made before anything is
read, and a budget too small for blocks of k rows is a
:class:`~oocnet.errors.BudgetError` naming the minimum.  Float32 matrices are
computed in float32 (sums of squares in float64), float64 in float64.  A
store in RAM (``zero_copy``) holds everything in RAM anyway; the budget then
bounds only the copies made here.  What the store itself allocates (a disk
store's commit hashes the new factors in pieces of a few MiB) is its own.

Durability: U and V are created (never overwritten), so a crash before the end
leaves, at the next open of a disk store, the state of its last commit; the
function commits the store once U and V are written (this also commits
whatever else was written to it since its last commit), and with ``drop=True``
deletes W and commits again.

Errors (bad rank or energy, a non-2-D or integer parameter, NaN/inf values,
existing output keys, a budget too small) are raised before the store
changes: values are checked in the first pass, before anything but the
temporaries has been written, and temporaries (and partly written factors) are
deleted on any error.  HDF5 does not give the space of a deleted dataset back
to the file (run ``h5repack``); pass ``scratch=`` another store to keep the
temporary basis out of an HDF5 file.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from .errors import (
    BudgetError,
    ConfigError,
    InputError,
    ParameterExists,
    ReadOnlyError,
    ShapeError,
)
from .paging import format_bytes, parse_bytes
from .store.base import ParamInfo, Store, validate_key

METHODS = ("auto", "exact", "randomized")

#: Row blocks of W read per step when no budget is given (randomized path).
DEFAULT_BLOCK_BYTES = 64 * 2**20

#: The exact path reads W in row blocks of about this many bytes.
EXACT_BLOCK_BYTES = 8 * 2**20

#: Suffixes of the randomized path's temporary keys: the m x k basis, TSQR's factors, the Q̂ blocks.
TEMP_SUFFIXES = (".svd-basis", ".svd-tsqr", ".svd-qhat")

#: Energy mode, randomized: the first sketch aims at this rank, then doubles.
ENERGY_FIRST_RANK = 32


@dataclass(frozen=True)
class FactorizeReport:
    """What :func:`factorize` did.

    Attributes
    ----------
    name : str
        The factorized parameter's key.
    shape : tuple of int
        Its shape (m, n).
    dtype : str
        Its dtype, which the factors share.
    rank : int
        r: U is m x r, V is r x n.
    params_before, params_after : int
        m·n and r·(m + n).
    ratio : float
        ``params_before / params_after`` (> 1 means smaller).
    rel_error : float
        ``||W − U V||_F / ||W||_F`` (0 for a zero matrix).
    error_estimated : bool
        False when ``rel_error`` comes from the exact singular values or from a
        pass that measured the residual; True when it is the projection estimate.
    energy_kept : float
        ``Σ_{i≤r} σ_i² / Σ_i σ_i²`` -- the share of ``||W||_F²`` the factors keep.
    energy_estimated : bool
        True on the randomized path (σ̃ from the sketch, a lower bound).
    passes : int
        Passes over W (each reads every row of W once).
    method : str
        ``"exact"`` or ``"randomized"``.
    keys : tuple of str
        ``(u_key, v_key)`` written.
    dropped : tuple of str
        Keys deleted at the end (W and its optimizer state when ``drop=True``).
    sketch_width : int
        k = r + oversample columns of the final sketch (randomized), else min(m, n).
    power_iters : int
        Power iterations per sketch (randomized), else 0.
    working_bytes : int
        The most bytes of blocks and buffers the plan held at once.
    seconds : float
        Wall time.
    """

    name: str
    shape: tuple[int, int]
    dtype: str
    rank: int
    params_before: int
    params_after: int
    ratio: float
    rel_error: float
    error_estimated: bool
    energy_kept: float
    energy_estimated: bool
    passes: int
    method: str
    keys: tuple[str, str]
    dropped: tuple[str, ...] = ()
    sketch_width: int = 0
    power_iters: int = 0
    working_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The report as a plain dict."""
        return asdict(self)

    def summary(self) -> str:
        """A few aligned lines for people (the ``oocnet compress`` output)."""
        m, n = self.shape
        u, v = self.keys
        r = self.rank
        how = "exact (LAPACK gesdd)" if self.method == "exact" else (
            f"randomized (sketch width {self.sketch_width}, {self.power_iters} power iterations)")
        err = "from the singular values" if self.method == "exact" else (
            "estimated" if self.error_estimated else "measured")
        lines = [
            f"factorized {self.name!r} ({m} x {n} {self.dtype}) into {u!r} ({m} x {r}) and {v!r} ({r} x {n})",
            f"method       {how}",
            f"passes       {self.passes} over W",
            f"rank         {r}",
            f"parameters   {self.params_before:,} -> {self.params_after:,} "
            + (f"({self.ratio:.2f}x smaller)" if self.ratio >= 1 else
               f"({1 / self.ratio:.2f}x LARGER: at this rank the factors hold more than W; ask for a lower rank)"),
            f"rel. error   {self.rel_error:.6f}  (||W - UV||_F / ||W||_F, {err})",
            f"energy kept  {self.energy_kept:.6f}  ({'estimated' if self.energy_estimated else 'exact'})",
            f"memory       {format_bytes(self.working_bytes)} of blocks and buffers at most",
            f"time         {self.seconds:.2f} s",
        ]
        if self.dropped:
            lines.append(f"dropped      {', '.join(repr(k) for k in self.dropped)}")
        return "\n".join(lines)


# -- validation -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Checked arguments of one factorization."""

    store: Store
    scratch: Store
    name: str
    info: ParamInfo
    rank: int | None
    energy: float | None
    budget: int | None
    method: str
    oversample: int
    power_iters: int
    seed: int
    drop: bool
    check_error: bool
    u_key: str
    v_key: str
    compute: np.dtype = field(default=np.dtype(np.float64))

    @property
    def m(self) -> int:
        return self.info.shape[0]

    @property
    def n(self) -> int:
        return self.info.shape[1]


def _check_int(name: str, value, low: int, high: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {rng}{what}, got {value!r}.")
    return int(value)


def temp_keys(name: str) -> tuple[str, ...]:
    """The randomized path's temporary keys for ``name`` (deleted when it ends, on success or error)."""
    return tuple(name + suffix for suffix in TEMP_SUFFIXES)


def default_keys(name: str) -> tuple[str, str]:
    """Output keys for ``name``: ``"<layer>/W"`` -> ``("<layer>/U", "<layer>/V")``, else ``name + "_U"``/``"_V"``.

    The first form is what :class:`~oocnet.FactorizedDense` and
    :class:`~oocnet.FactorizedEmbedding` named ``<layer>`` look for.
    """
    if name.endswith("/W"):
        return name[:-1] + "U", name[:-1] + "V"
    return name + "_U", name + "_V"


def _check_new_key(store: Store, key: str, what: str) -> None:
    if key in store:
        raise ParameterExists(
            f"{what} {key!r} already exists in the store with shape {store.info(key).shape} (an earlier "
            f"factorization?); delete it first, or choose other keys (u_key=, v_key=; on the command line "
            f"--u-key, --v-key)."
        )
    for k in store.keys():  # HDF5 cannot hold both "a" and "a/b": refuse now, not after the work
        if k.startswith(key + "/") or key.startswith(k + "/"):
            raise ConfigError(f"{what} {key!r} cannot sit beside parameter {k!r} (one is a path prefix of the "
                              f"other).")


def _validate(store, name, rank, energy, budget, method, oversample, power_iters, seed, drop, check_error,
              u_key, v_key, scratch) -> _Plan:
    if not isinstance(store, Store):
        raise ConfigError(f"store must be an oocnet Store (see oocnet.open_store), got {type(store).__name__}.")
    info = store.info(validate_key(name))  # closed store, unknown key: their own errors
    if store.read_only:
        raise ReadOnlyError(f"the store was opened read-only; factorizing {name!r} writes U and V into it.")
    if len(info.shape) != 2:
        raise ShapeError(f"parameter {name!r} must be 2-D (a weight matrix) to factorize, got shape {info.shape}.")
    if not np.issubdtype(info.dtype, np.floating):
        raise ConfigError(f"parameter {name!r} must hold floating-point values to factorize, got {info.dtype}.")
    m, n = info.shape
    if (rank is None) == (energy is None):
        raise ConfigError(f"give exactly one of rank= or energy=, got rank={rank!r} and energy={energy!r}.")
    if rank is not None:
        rank = _check_int("rank", rank, 1, min(m, n), f" (min(m, n) for {name!r} of shape {info.shape})")
    else:
        if isinstance(energy, bool) or not isinstance(energy, (int, float, np.integer, np.floating)) or not (
                0 < energy <= 1):
            raise ConfigError(f"energy must be a number in (0, 1], got {energy!r}.")
        energy = float(energy)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    oversample = _check_int("oversample", oversample, 0)
    power_iters = _check_int("power_iters", power_iters, 0)
    seed = _check_int("seed", seed, 0)
    for flag, value in (("drop", drop), ("check_error", check_error)):
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{flag} must be True or False, got {value!r}.")
    budget = parse_bytes(budget)
    du, dv = default_keys(name)
    u_key = validate_key(du if u_key is None else u_key)
    v_key = validate_key(dv if v_key is None else v_key)
    if len({name, u_key, v_key}) != 3:
        raise ConfigError(f"u_key, v_key and the parameter must be three different keys, got {u_key!r}, {v_key!r} "
                          f"for {name!r}.")
    for what, key in (("u_key", u_key), ("v_key", v_key)):
        if ":" in key:  # "<param>:<state>" is optimizer state: drop=True would delete a factor named so
            raise ConfigError(f"{what} {key!r} has a ':', which names optimizer state ('<parameter>:<state>'); "
                              f"choose a key without one (the default is {du if what == 'u_key' else dv!r}).")
    _check_new_key(store, u_key, "u_key")
    _check_new_key(store, v_key, "v_key")
    if scratch is None:
        scratch = store
    elif not isinstance(scratch, Store) or scratch.closed or scratch.read_only:
        raise ConfigError(f"scratch must be an open, writable oocnet Store or None, got {scratch!r}.")
    for key in temp_keys(name):
        validate_key(key)
    # float16 is computed in float32 (numpy's float16 matmul is slow and loses digits);
    # float32 stays float32 (twice the BLAS speed, half the IO of the basis).
    compute = np.dtype(np.float64) if info.dtype == np.float64 else np.dtype(np.float32)
    return _Plan(store, scratch, name, info, rank, energy, budget, method, oversample, power_iters, seed,
                 bool(drop), bool(check_error), u_key, v_key, compute)


# -- memory plans -----------------------------------------------------------------------------


def exact_bytes(m: int, n: int, dtype) -> int:
    """Bytes the exact path holds for an m x n parameter of ``dtype`` (W, the SVD's outputs and workspace).

    W is read (in blocks of at most 8 MiB) into one Fortran-ordered array that
    LAPACK's gesdd (JOBZ='S') decomposes in place; it returns k = min(m, n)
    singular vectors on each side with a workspace of about
    ``4 k² + 7 k + max(m, n)`` elements; the factors written back are m x r and
    r x n (counted at their largest, r = k).  float16 is computed in float32.
    """
    ws = np.dtype(dtype).itemsize
    cs = 8 if ws == 8 else 4
    k = min(m, n)
    block = min(m * n * ws, EXACT_BLOCK_BYTES + n * ws)
    return block + cs * (m * n + m * k + k * n + 5 * k * k + 10 * max(m, n)) + 32 * k + ws * (m * k + k * n)


@dataclass
class _Layout:
    bounds: list[tuple[int, int]]
    working_bytes: int


def _randomized_layout(p: _Plan, k: int) -> _Layout:
    """Row blocks for a sketch of width k, and the bytes they and the fixed buffers need."""
    m, n = p.m, p.n
    ws, cs = p.info.dtype.itemsize, p.compute.itemsize
    r = k  # the factors' rank is at most k
    # Per row of a block: W read double-buffered (+ a cast for float16); the basis
    # read double-buffered; Y, Q_i Q̂_i and the QR's Fortran copy and Q; the U rows
    # (stored and compute dtype); the residual W_i - U_i V.
    per_row = 2 * n * ws + (n * cs if ws != cs else 0) + 6 * k * cs + r * (ws + cs) + n * cs
    # Independent of the blocks: Ω / orth(Z) in float64 and compute dtype, Z and its
    # product, B and its product, the SVD of B (copy, Ũ, Vᵀ, workspace), V, and
    # TSQR's k x k matrices (the rest of TSQR lives in the scratch store).
    fixed = 3 * n * k * (8 + cs) + 8 * (2 * k * n + 5 * k * k + 8 * k) + r * n * (ws + cs) + 16 * k * k * 8
    if p.budget is None:
        rows = max(k, DEFAULT_BLOCK_BYTES // max(1, 2 * n * ws))
    else:
        rows = (p.budget - fixed) // per_row
    rows = min(rows, m)
    # Blocks of (nearly) equal size, at least k rows each so that every R_i is k x k,
    # and at most `rows` when the budget allows it.
    nb = max(1, min(math.ceil(m / max(rows, 1)), m // k))
    edges = np.linspace(0, m, nb + 1).round().astype(np.int64)
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    working = fixed + max(b - a for a, b in bounds) * per_row
    if p.budget is not None and working > p.budget:
        need = fixed + math.ceil(m / max(1, m // k)) * per_row
        raise BudgetError(
            f"the randomized factorization of {p.name!r} ({m} x {n} {p.info.dtype}, sketch width {k}) needs a "
            f"budget of at least {need} bytes ({format_bytes(need)}: row blocks of at least {k} rows of W, the "
            f"basis and their buffers, plus {n} x {k} and {k} x {n} matrices), got {p.budget} bytes; raise the "
            + ("budget or lower the rank or the oversampling." if p.rank is not None else
               "budget, ask for less energy, or give a rank (the energy asked needed a sketch this wide).")
        )
    return _Layout(bounds, working)


# -- row blocks, read ahead -------------------------------------------------------------------


class _Blocks:
    """Row blocks of stored parameters read into reused buffers, the next block read in the background.

    Buffers are allocated once per sketch and reused by every pass: large
    per-pass allocations would be returned to the OS and page-faulted back.
    """

    def __init__(self, sources: list[tuple[Store, str]], bounds: list[tuple[int, int]],
                 pool: ThreadPoolExecutor) -> None:
        self.sources, self.bounds, self.pool = sources, bounds, pool
        rows = max(b - a for a, b in bounds)
        self.bufs = {}
        for store, key in sources:
            info = store.info(key)
            self.bufs[key] = [np.empty((rows, *info.row_shape), info.dtype) for _ in range(2)]

    def _read(self, i: int, keys: tuple[str, ...]) -> None:
        a, b = self.bounds[i]
        for store, key in self.sources:
            if key in keys:
                store.read_rows(key, a, b, out=self.bufs[key][i % 2][: b - a])

    def __call__(self, *keys: str) -> Iterator[tuple[int, int, int, dict[str, np.ndarray]]]:
        """One pass: yield ``(i, start, stop, {key: rows})`` for every block, in order."""
        self.pending = self.pool.submit(self._read, 0, keys)
        try:
            for i, (a, b) in enumerate(self.bounds):
                self.pending.result()
                # The other buffer held block i - 1, which the caller is done with.
                self.pending = self.pool.submit(self._read, i + 1, keys) if i + 1 < len(self.bounds) else None
                yield i, a, b, {k: self.bufs[k][i % 2][: b - a] for k in keys}
        finally:
            self.wait()

    def wait(self) -> None:
        """Let a read in flight finish (before its buffer is dropped, or the store deletes a key)."""
        fut, self.pending = getattr(self, "pending", None), None
        if fut is not None:
            fut.exception()


# -- the two methods ----------------------------------------------------------------------------


def _linalg():
    """``scipy.linalg``, imported on first use: it would add ~50 ms and ~8 MB to ``import oocnet``."""
    import scipy.linalg

    return scipy.linalg


def _svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD by gesdd, falling back to the slower, always-converging gesvd."""
    try:
        return _linalg().svd(a, full_matrices=False, overwrite_a=False, check_finite=False,
                                lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        return _linalg().svd(a, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def _rank_for_energy(sq: np.ndarray, total: float, energy: float, limit: int) -> int:
    """Smallest r with ``Σ_{i≤r} sq_i >= energy * total`` (at most ``limit``)."""
    if total <= 0:
        return 1
    frac = np.cumsum(sq) / total
    r = int(np.searchsorted(frac, energy * (1 - 1e-12), side="left")) + 1
    return max(1, min(r, limit))


def _bad_row(block: np.ndarray) -> int:
    return int(np.flatnonzero(~np.all(np.isfinite(block), axis=1))[0])


def _non_finite(p: _Plan, row: int) -> InputError:
    return InputError(
        f"parameter {p.name!r} contains NaN or inf (first in row {row}); expected finite values. Nothing was "
        f"written; find where training diverged (a lower learning rate?) before compressing."
    )


@dataclass
class _Result:
    rank: int
    rel_error: float
    error_estimated: bool
    energy_kept: float
    energy_estimated: bool
    passes: int
    sketch_width: int
    power_iters: int
    working_bytes: int


def _exact(p: _Plan) -> _Result:
    m, n = p.m, p.n
    # W is read block by block into a Fortran-ordered array: LAPACK then works on it
    # in place (overwrite_a) with no second copy of W -- and the tall m x n problem is
    # about 5x faster in gesdd than the wide transposed one a C-ordered W would be.
    w = np.empty((m, n), dtype=p.compute, order="F")
    step = max(1, EXACT_BLOCK_BYTES // p.info.row_nbytes)
    for a in range(0, m, step):
        blk = p.store.read_rows(p.name, a, min(m, a + step))
        if not np.all(np.isfinite(blk)):
            raise _non_finite(p, a + _bad_row(blk))
        w[a: a + blk.shape[0]] = blk
    del blk
    try:
        u_, s, vt = _linalg().svd(w, full_matrices=False, overwrite_a=True, check_finite=False,
                                     lapack_driver="gesdd")
    except np.linalg.LinAlgError:  # gesdd did not converge: the slower gesvd always does (W is read again)
        for a in range(0, m, step):
            w[a: a + step] = p.store.read_rows(p.name, a, min(m, a + step))
        u_, s, vt = _linalg().svd(w, full_matrices=False, overwrite_a=True, check_finite=False,
                                     lapack_driver="gesvd")
    del w
    # Squared relative to the largest value: the energy fractions are the same, and sigma^2 of a
    # matrix with entries near 1e160 does not overflow.
    top = float(s[0]) if s.size and s[0] > 0 else 1.0
    sq = (s.astype(np.float64) / top) ** 2
    total = float(sq.sum())
    r = p.rank if p.rank is not None else _rank_for_energy(sq, total, p.energy, min(m, n))
    root = np.sqrt(s[:r])
    u = np.ascontiguousarray(u_[:, :r] * root, dtype=p.info.dtype)  # m x r
    v = np.ascontiguousarray(vt[:r] * root[:, None], dtype=p.info.dtype)  # r x n
    del u_, vt
    kept = float(sq[:r].sum())
    _write_factors(p, u, v)
    return _Result(
        rank=r,
        rel_error=math.sqrt(max(0.0, total - kept) / total) if total > 0 else 0.0,
        error_estimated=False,
        energy_kept=kept / total if total > 0 else 1.0,
        energy_estimated=False,
        passes=1,
        sketch_width=min(m, n),
        power_iters=0,
        working_bytes=exact_bytes(m, n, p.info.dtype),
    )


def _write_factors(p: _Plan, u: np.ndarray | None, v: np.ndarray) -> None:
    """Create V, then U (whole, or zeros filled later by the caller); undo on any error."""
    made = []
    try:
        p.store.create(p.v_key, v.shape, p.info.dtype, v)
        made.append(p.v_key)
        shape = (p.m, v.shape[0])
        p.store.create(p.u_key, shape, p.info.dtype, u)
        made.append(p.u_key)
    except BaseException:
        for key in made:
            p.store.delete(key)
        raise


class _Sketch:
    """One randomized range finder of width k over W; the basis and TSQR's factors live in the scratch store.

    Three temporary keys: ``<name>.svd-basis`` (m x k, the blocks' local Q_i),
    ``<name>.svd-tsqr`` (2k·nb x k: per block i >= 1 the 2k x k factor
    ``[A_i; B_i]`` of ``[R_acc; R_i] = [A_i; B_i] R_acc'``) and ``<name>.svd-qhat``
    (k·nb x k: the Q̂_i that make ``Q = diag(Q_i) Q̂`` orthonormal).
    """

    def __init__(self, p: _Plan, k: int, pool: ThreadPoolExecutor) -> None:
        self.p, self.k = p, k
        self.layout = _randomized_layout(p, k)
        self.bounds = self.layout.bounds
        self.c = p.compute
        nb = len(self.bounds)
        rows = max(b - a for a, b in self.bounds)
        self.ybuf = np.empty((rows, k), self.c)  # W_i @ Ω, and Q_i Q̂_i
        self.qh = np.empty((k, k), self.c)  # Q̂_i of the block being read
        self.passes = 0
        self.normsq = 0.0
        self.keys = temp_keys(p.name)
        self.basis, self.tsqr, self.qhat = self.keys
        made = []
        try:  # last: nothing above can leave temporaries behind
            for key, shape, dt in ((self.basis, (p.m, k), self.c), (self.tsqr, (2 * k * nb, k), np.float64),
                                   (self.qhat, (k * nb, k), self.c)):
                p.scratch.create(key, shape, dt)
                made.append(key)
            self.blocks = _Blocks([(p.store, p.name), (p.scratch, self.basis)], self.bounds, pool)
        except BaseException:
            for key in made:
                p.scratch.delete(key)
            raise

    def _w(self, w: np.ndarray) -> np.ndarray:
        return w if w.dtype == self.c else w.astype(self.c)

    def range_pass(self, omega: np.ndarray, check: bool) -> None:
        """Y = W Ω, orthonormalised by TSQR into the stored basis: a pass over W, then O(k²) per block."""
        p, k, scratch = self.p, self.k, self.p.scratch
        omega_c = np.ascontiguousarray(omega, dtype=self.c)
        normsq = 0.0
        r_acc = None
        for i, a, b, blk in self.blocks(p.name):
            w = blk[p.name]
            if check:
                part = float(np.einsum("ij,ij->", w, w, dtype=np.float64))  # no float64 copy of the block
                if not math.isfinite(part):
                    if not np.all(np.isfinite(w)):
                        raise _non_finite(p, a + _bad_row(w))
                    raise InputError(f"||{p.name}||_F² overflows float64 (values near {np.abs(w).max():.3g}); "
                                     f"rescale the parameter before factorizing.")
                normsq += part
            y = self.ybuf[: b - a]
            np.matmul(self._w(w), omega_c, out=y)
            q, r = _linalg().qr(y, mode="economic", overwrite_a=True, check_finite=False)
            scratch.write_rows(self.basis, a, q)
            r = r.astype(np.float64, copy=False)
            if r_acc is None:
                r_acc = r
            else:  # flat-tree TSQR: fold R_i into the running R, keep the 2k x k orthogonal factor
                ab, r_acc = _linalg().qr(np.vstack([r_acc, r]), mode="economic", check_finite=False)
                scratch.write_rows(self.tsqr, 2 * k * i, ab)
        if check:
            self.normsq = normsq
        self.passes += 1
        # Unroll the tree backwards: Q̂_i = B_i A_{i+1} ... A_{nb-1}, Q̂_0 = A_1 ... A_{nb-1}.
        prod = np.eye(k)
        for i in range(len(self.bounds) - 1, 0, -1):
            ab = scratch.read_rows(self.tsqr, 2 * k * i, 2 * k * (i + 1))
            scratch.write_rows(self.qhat, k * i, ab[k:] @ prod)
            prod = ab[:k] @ prod
        scratch.write_rows(self.qhat, 0, prod)

    def _qhat(self, i: int) -> np.ndarray:
        return self.p.scratch.read_rows(self.qhat, self.k * i, self.k * (i + 1), out=self.qh)

    def _basis(self, i: int, t: np.ndarray) -> np.ndarray:
        """Rows of block i of the orthonormal basis Q: Q_i Q̂_i."""
        q = self.ybuf[: t.shape[0]]
        np.matmul(t, self._qhat(i), out=q)
        return q

    def power_iteration(self) -> None:
        """Q <- orth(W orth(Wᵀ Q)): two passes."""
        p = self.p
        z = np.zeros((p.n, self.k), np.float64)
        for i, _, _, blk in self.blocks(p.name, self.basis):
            z += self._w(blk[p.name]).T @ self._basis(i, blk[self.basis])
        self.passes += 1
        qz = _linalg().qr(z, mode="economic", overwrite_a=True, check_finite=False)[0]
        del z
        self.range_pass(qz, check=False)

    def project(self) -> np.ndarray:
        """B = Qᵀ W (k x n, float64): one pass."""
        p = self.p
        bmat = np.zeros((self.k, p.n), np.float64)
        for i, _, _, blk in self.blocks(p.name, self.basis):
            bmat += self._basis(i, blk[self.basis]).T @ self._w(blk[p.name])
        self.passes += 1
        return bmat

    def write_u(self, m_small: np.ndarray, v: np.ndarray, residual: bool) -> float | None:
        """U = Q M written row block by row block; with ``residual``, also Σ ||W_i − U_i V||² (a pass over W)."""
        p = self.p
        keys = (p.name, self.basis) if residual else (self.basis,)
        vc = v.astype(self.c)
        m_c = m_small.astype(self.c)
        err2 = 0.0
        rows = max(b - a for a, b in self.bounds)
        res = np.empty((rows, p.n), self.c) if residual else None
        for i, a, b, blk in self.blocks(*keys):
            mi = self._qhat(i) @ m_c  # k x r: block i of Q̂ Ũ_r sqrt(Σ_r)
            u = (blk[self.basis] @ mi).astype(p.info.dtype)
            p.store.write_rows(p.u_key, a, u)
            if residual:
                d = res[: b - a]
                np.matmul(u.astype(self.c, copy=False), vc, out=d)
                np.subtract(self._w(blk[p.name]), d, out=d)
                err2 += float(np.einsum("ij,ij->", d, d, dtype=np.float64))
        if residual:
            self.passes += 1
            return err2
        return None

    def close(self) -> None:
        self.blocks.wait()  # HDF5: a delete must not race with a read
        for key in self.keys:
            if key in self.p.scratch:
                self.p.scratch.delete(key)


def _randomized(p: _Plan) -> _Result:
    m, n = p.m, p.n
    kmax = min(m, n)
    rng = np.random.default_rng(p.seed)
    target = p.rank if p.rank is not None else min(kmax, ENERGY_FIRST_RANK)
    passes, working = 0, 0
    normsq = None
    with ThreadPoolExecutor(1, thread_name_prefix="oocnet-svd-read") as pool:
        while True:
            k = min(kmax, target + p.oversample)
            sketch = _Sketch(p, k, pool)
            try:
                working = max(working, sketch.layout.working_bytes)
                sketch.range_pass(rng.standard_normal((n, k)), check=normsq is None)
                if normsq is None:
                    normsq = sketch.normsq
                for _ in range(p.power_iters):
                    sketch.power_iteration()
                bmat = sketch.project()
                ub, s, vt = _svd(bmat)
                del bmat
                sq = s.astype(np.float64) ** 2
                if p.rank is None and k < kmax and normsq > 0 and sq[:target].sum() < p.energy * (1 - 1e-12) * normsq:
                    # `target` directions of this sketch do not reach the energy asked: twice as wide.
                    passes += sketch.passes
                    target = min(kmax, 2 * target)
                    continue
                # A sketch as wide as min(m, n) spans W's whole range: all its values are W's.
                limit = target if k < kmax else sq.size
                r = p.rank if p.rank is not None else _rank_for_energy(sq[:limit], normsq, p.energy, limit)
                root = np.sqrt(s[:r])
                v = np.ascontiguousarray(vt[:r] * root[:, None], dtype=p.info.dtype)
                _write_factors(p, None, v)
                try:
                    err2 = sketch.write_u(ub[:, :r] * root, v, residual=p.check_error)
                except BaseException:
                    sketch.blocks.wait()
                    p.store.delete(p.u_key)
                    p.store.delete(p.v_key)
                    raise
                passes += sketch.passes
                break
            finally:
                sketch.close()
    kept = float(sq[:r].sum())
    if normsq <= 0:
        rel, energy = 0.0, 1.0
    elif err2 is not None:
        rel, energy = math.sqrt(err2 / normsq), min(1.0, kept / normsq)
    else:
        rel, energy = math.sqrt(max(0.0, normsq - kept) / normsq), min(1.0, kept / normsq)
    return _Result(
        rank=r,
        rel_error=rel,
        error_estimated=err2 is None,
        energy_kept=energy,
        energy_estimated=True,
        passes=passes,
        sketch_width=k,
        power_iters=p.power_iters,
        working_bytes=working,
    )


# -- the public function ------------------------------------------------------------------------


def _commit(store: Store) -> None:
    """Commit the store, keeping its step and metadata (flush where a store has no commits)."""
    commit = getattr(store, "commit", None)
    if commit is None:
        store.flush()
        return
    last = getattr(store, "last_commit", None) or {}
    commit(metadata=last.get("metadata") or {})


def factorize(store: Store, name: str, rank: int | None = None, energy: float | None = None, *,
              budget=None, method: str = "auto", oversample: int = 10, power_iters: int = 2, seed: int = 0,
              drop: bool = False, check_error: bool = True, u_key: str | None = None, v_key: str | None = None,
              scratch: Store | None = None) -> FactorizeReport:
    """Replace the stored matrix ``name`` (m x n) by U (m x r) and V (r x n) with ``W ≈ U V`` (truncated SVD).

    Parameters
    ----------
    store : Store
        An open, writable store holding ``name``; U and V are written into it.
    name : str
        Key of a 2-D floating-point parameter W, shape (m, n).
    rank : int, optional
        r, in ``[1, min(m, n)]``.  Give exactly one of ``rank`` and ``energy``.
    energy : float, optional
        In (0, 1]: the smallest r whose factors keep at least this share of
        ``||W||_F² = Σ σ_i²`` (on the randomized path, of the sketch's σ̃², which
        can only make r larger).
    budget : int, str or None
        Most bytes of W's blocks and buffers held at once (``"256MiB"``); None
        for no limit.
    method : {"auto", "exact", "randomized"}
        ``"auto"``: exact when W and the SVD's workspace fit the budget
        (:func:`exact_bytes`), else randomized.  ``"exact"`` refuses a budget
        too small for it.
    oversample : int
        p: the sketch has k = r + p columns (capped at min(m, n)).  Randomized only.
    power_iters : int
        q: power iterations (2 passes over W each); more sharpen a slowly
        decaying spectrum.  Randomized only.
    seed : int
        Seeds the Gaussian test matrix (results are reproducible).
    drop : bool
        Delete W (and its optimizer state, ``"<name>:*"``) once U and V are written.
    check_error : bool
        Randomized only: measure ``||W − U V||_F`` with one more pass over W (which
        also writes U); else estimate it from ``||W||_F²`` and the sketch.
    u_key, v_key : str, optional
        Output keys; default ``"<layer>/U"`` and ``"<layer>/V"`` when ``name`` is
        ``"<layer>/W"``, else ``name + "_U"`` and ``name + "_V"``.  Must not exist,
        nor hold a ``':'`` (which names optimizer state, ``"<parameter>:<state>"``).
    scratch : Store, optional
        Where the randomized path keeps its temporaries, the m x k basis and
        TSQR's small factors (default: ``store``).

    Returns
    -------
    FactorizeReport
        Rank, parameters before and after, ratio, relative Frobenius error,
        energy kept, passes over W, method, keys.

    Raises
    ------
    ConfigError
        Bad rank, energy, method, flags, keys; an integer parameter.
    ShapeError
        W is not 2-D.
    InputError
        W holds NaN or inf.
    BudgetError
        The budget cannot hold the smallest step.
    ParameterExists, ParameterNotFound, ReadOnlyError
        Output keys taken, ``name`` missing, store read-only.

    Close (or commit) a model using the store first: this reads the store, not
    a model's pager.  Every error leaves the store as it was (temporaries and
    partly written factors are deleted).  On success the store is committed (see the module
    docstring), and committed again after ``drop``.

    Examples
    --------
    >>> report = factorize(store, "dense_0/W", rank=32, budget="256MiB")   # doctest: +SKIP
    >>> report.ratio, report.rel_error                                     # doctest: +SKIP
    """
    t0 = time.perf_counter()
    p = _validate(store, name, rank, energy, budget, method, oversample, power_iters, seed, drop, check_error,
                  u_key, v_key, scratch)
    fits = p.budget is None or exact_bytes(p.m, p.n, p.info.dtype) <= p.budget
    if p.method == "exact" and not fits:
        need = exact_bytes(p.m, p.n, p.info.dtype)
        raise BudgetError(
            f"the exact SVD of {name!r} ({p.m} x {p.n} {p.info.dtype}) holds W whole with LAPACK's workspace, "
            f"about {format_bytes(need)} ({need} bytes), more than the budget of {format_bytes(p.budget)}; "
            f"use method='randomized' (or 'auto') or a larger budget."
        )
    chosen = p.method if p.method != "auto" else ("exact" if fits else "randomized")
    if chosen == "randomized":
        k0 = min(p.m, p.n, (p.rank if p.rank is not None else ENERGY_FIRST_RANK) + p.oversample)
        _randomized_layout(p, k0)  # a budget too small raises here, before anything is written
        for key in temp_keys(p.name):  # left by a run that crashed: ours to remove
            if key in p.scratch:
                p.scratch.delete(key)
        res = _randomized(p)
    else:
        res = _exact(p)
    _commit(p.store)  # U and V are durable before anything else happens
    dropped: list[str] = []
    if p.drop:
        dropped = [p.name] + [k for k in p.store.keys() if k.startswith(p.name + ":") and k not in (p.u_key, p.v_key)]
        for key in dropped:
            p.store.delete(key)
        _commit(p.store)
    before = p.m * p.n
    after = res.rank * (p.m + p.n)
    return FactorizeReport(
        name=p.name, shape=(p.m, p.n), dtype=p.info.dtype.name, rank=res.rank, params_before=before,
        params_after=after, ratio=before / after, rel_error=res.rel_error, error_estimated=res.error_estimated,
        energy_kept=res.energy_kept, energy_estimated=res.energy_estimated, passes=res.passes, method=chosen,
        keys=(p.u_key, p.v_key), dropped=tuple(dropped), sketch_width=res.sketch_width,
        power_iters=res.power_iters, working_bytes=res.working_bytes, seconds=time.perf_counter() - t0,
    )


# -- evaluating a matrix as a linear classifier ----------------------------------------------------


def linear_eval(store: Store, X, y, *, w_key: str | None = None, u_key: str | None = None,
                v_key: str | None = None, budget=None) -> dict:
    """Mean softmax cross-entropy and accuracy of the linear classifier ``logits = X @ W`` (or ``X @ U @ V``).

    What ``oocnet compress --eval`` prints before and after: with no stored model
    architecture to rebuild, the matrix itself is evaluated as a classifier
    whose classes are its columns.

    Parameters
    ----------
    store : Store
        Holds ``w_key``, or ``u_key`` and ``v_key``.
    X : ndarray or scipy.sparse matrix, shape (N, m)
        Inputs, finite.
    y : array-like of int, shape (N,)
        Labels in ``[0, n)``.
    w_key : str, optional
        W (m x n).  Give either it or both factor keys.
    u_key, v_key : str, optional
        U (m x r) and V (r x n).
    budget : int, str or None
        Most bytes of W's (or U's) row blocks read at once.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float, "n": N}``.
    """
    if (w_key is None) == (u_key is None or v_key is None) or (w_key is not None and (u_key or v_key)):
        raise ConfigError("give either w_key, or both u_key and v_key.")
    first = w_key if w_key is not None else u_key
    info = store.info(first)
    if len(info.shape) != 2:
        raise ShapeError(f"parameter {first!r} must be 2-D to evaluate as a linear classifier, got {info.shape}.")
    m = info.shape[0]
    if v_key is not None:
        vinfo = store.info(v_key)
        if len(vinfo.shape) != 2 or vinfo.shape[0] != info.shape[1]:
            raise ShapeError(f"{u_key!r} {info.shape} and {v_key!r} {vinfo.shape} do not chain.")
        n = vinfo.shape[1]
    else:
        n = info.shape[1]
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        data = X.data
    else:
        X = np.asarray(X)
        data = X
    if X.ndim != 2 or X.shape[1] != m or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(f"X must be a numeric (N, {m}) array or sparse matrix for {first!r}, got "
                         f"{getattr(X, 'dtype', type(X).__name__)} with shape {getattr(X, 'shape', '?')}.")
    if X.shape[0] == 0:
        raise InputError("X must have at least one row, got 0.")
    if not np.all(np.isfinite(data)):
        raise InputError("X contains NaN or inf.")
    labels = np.asarray(y)
    if labels.shape != (X.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"y must be {X.shape[0]} integer labels, got {labels.dtype} with shape {labels.shape}.")
    if labels.min() < 0 or labels.max() >= n:
        raise InputError(f"labels must lie in [0, {n}) for {n} classes, got labels in [{labels.min()}, "
                         f"{labels.max()}].")
    limit = parse_bytes(budget) or DEFAULT_BLOCK_BYTES
    step = max(1, limit // max(1, info.row_nbytes))
    width = info.shape[1]
    acc = np.zeros((X.shape[0], width), np.float64)
    for a in range(0, m, step):  # X @ W (or X @ U) one row block of the stored matrix at a time
        b = min(m, a + step)
        rows = store.read_rows(first, a, b).astype(np.float64)
        acc += np.asarray(X[:, a:b] @ rows)
    logits = acc if v_key is None else acc @ store.read(v_key).astype(np.float64)
    shift = logits - logits.max(axis=1, keepdims=True)
    logp = shift - np.log(np.exp(shift).sum(axis=1, keepdims=True))
    idx = np.arange(X.shape[0])
    return {
        "loss": float(-logp[idx, labels].mean()),
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels)),
        "n": int(X.shape[0]),
    }


__all__ = ["factorize", "FactorizeReport", "default_keys", "exact_bytes", "linear_eval", "METHODS"]
