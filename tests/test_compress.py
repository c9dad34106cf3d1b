"""Truncated SVD of stored matrices: Eckart–Young on known spectra, streaming under a budget, refusals, the CLI."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from oocnet import cli, compress
from oocnet.compress import factorize, linear_eval
from oocnet.errors import (
    BudgetError,
    ConfigError,
    InputError,
    ParameterExists,
    ParameterNotFound,
    ReadOnlyError,
    ShapeError,
)
from oocnet.store import MemoryStore, open_store

from test_outofcore import make_store
from test_paging import CopyingStore


def known(m, n, sigma, seed=0):
    """W = A diag(sigma) Bᵀ with orthonormal A (m x k), B (n x k): its singular values are ``sigma``."""
    rng = np.random.default_rng(seed)
    k = len(sigma)
    a = np.linalg.qr(rng.standard_normal((m, k)))[0]
    b = np.linalg.qr(rng.standard_normal((n, k)))[0]
    return (a * sigma) @ b.T


def optimum(sigma, r):
    """Eckart–Young: the smallest ||W − W_r||_F / ||W||_F over rank-r matrices."""
    sq = np.asarray(sigma, float) ** 2
    return float(np.sqrt(sq[r:].sum() / sq.sum()))


def store_with(W, key="dense_0/W", store=None, dtype=None):
    store = MemoryStore() if store is None else store
    store.create(key, W.shape, dtype or W.dtype, W)
    return store


def snapshot(store):
    return {k: store.read(k).copy() for k in store.keys()}


def assert_unchanged(store, before):
    assert store.keys() == sorted(before)
    for k, v in before.items():
        np.testing.assert_array_equal(store.read(k), v, err_msg=k)


M, N = 300, 80
SIGMA = 1.0 / (1.0 + np.arange(N))  # slowly decaying: the hard case for a randomized sketch
W0 = known(M, N, SIGMA)
TALL = known(4000, N, SIGMA, seed=1)


# -- the exact path ----------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [1, 5, 17, N])
def test_exact_reaches_eckart_young(rank):
    store = store_with(W0)
    rep = factorize(store, "dense_0/W", rank=rank)
    U, V = store.read("dense_0/U"), store.read("dense_0/V")
    assert U.shape == (M, rank) and V.shape == (rank, N)
    measured = np.linalg.norm(W0 - U @ V) / np.linalg.norm(W0)
    best = optimum(SIGMA, rank)
    assert measured == pytest.approx(best, rel=0.01, abs=1e-12)
    assert rep.rel_error == pytest.approx(measured, rel=1e-6, abs=1e-12)
    assert rep.energy_kept == pytest.approx(1 - best**2, rel=1e-12)
    assert (rep.method, rep.passes, rep.rank, rep.energy_estimated, rep.error_estimated) == (
        "exact", 1, rank, False, False)
    assert rep.params_before == M * N and rep.params_after == rank * (M + N)
    assert rep.ratio == pytest.approx(M * N / (rank * (M + N)))
    assert rep.keys == ("dense_0/U", "dense_0/V")
    np.testing.assert_array_equal(store.read("dense_0/W"), W0)  # kept
    # The singular values are split evenly: UᵀU = V Vᵀ = diag(σ_1..σ_r).
    np.testing.assert_allclose(U.T @ U, np.diag(SIGMA[:rank]), atol=1e-12)
    np.testing.assert_allclose(V @ V.T, np.diag(SIGMA[:rank]), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 30), n=st.integers(1, 30), data=st.data())
def test_exact_error_equals_the_tail_of_numpys_singular_values(m, n, data):
    rank = data.draw(st.integers(1, min(m, n)))
    W = np.random.default_rng(m * 31 + n).standard_normal((m, n))
    store = store_with(W, "w")
    rep = factorize(store, "w", rank=rank)
    s = np.linalg.svd(W, compute_uv=False)
    assert rep.rel_error == pytest.approx(optimum(s, rank), rel=1e-9, abs=1e-12)
    measured = np.linalg.norm(W - store.read("w_U") @ store.read("w_V")) / np.linalg.norm(W)
    assert measured == pytest.approx(optimum(s, rank), rel=1e-6, abs=1e-9)


def test_energy_picks_the_smallest_rank_that_keeps_it():
    frac = np.cumsum(SIGMA**2) / np.sum(SIGMA**2)
    for energy in (0.5, 0.9, 0.97, 1.0):
        store = store_with(W0)
        rep = factorize(store, "dense_0/W", energy=energy)
        want = int(np.argmax(frac >= energy - 1e-12)) + 1
        assert rep.rank == want, energy
        assert rep.energy_kept >= energy - 1e-12
        assert rep.rank == 1 or frac[rep.rank - 2] < energy


# -- the randomized path -------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [3, 10, 25])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_randomized_is_within_5_percent_of_the_optimum_under_a_budget(rank, dtype):
    W = TALL.astype(dtype)
    store = store_with(W, store=CopyingStore())
    budget = 640 * 2**10  # W is 2.4 MiB in float64: several row blocks
    rep = factorize(store, "dense_0/W", rank=rank, budget=budget, seed=0)
    assert rep.method == "randomized"
    U, V = store.read("dense_0/U"), store.read("dense_0/V")
    assert U.dtype == V.dtype == np.dtype(dtype)
    measured = np.linalg.norm(TALL - U.astype(float) @ V.astype(float)) / np.linalg.norm(TALL)
    assert measured <= 1.05 * optimum(SIGMA, rank)
    assert rep.rel_error == pytest.approx(measured, rel=1e-4)  # measured by the extra pass, not estimated
    assert not rep.error_estimated and rep.energy_estimated
    assert rep.passes == 2 * 2 + 3
    assert rep.working_bytes <= budget
    assert rep.energy_kept == pytest.approx(1 - optimum(SIGMA, rank) ** 2, rel=0.02)
    assert sorted(store.keys()) == ["dense_0/U", "dense_0/V", "dense_0/W"]  # the temporary basis is gone


def test_randomized_is_reproducible_and_power_iterations_help():
    errs = {}
    for q in (0, 1, 3):
        reps = [factorize(store_with(W0), "dense_0/W", rank=10, method="randomized", power_iters=q, seed=7)
                for _ in range(2)]
        assert reps[0].rel_error == reps[1].rel_error
        assert reps[0].passes == 2 * q + 3
        errs[q] = reps[0].rel_error
    assert errs[0] > errs[1] > errs[3] >= optimum(SIGMA, 10)


def test_randomized_error_estimate_without_the_extra_pass():
    store = store_with(W0)
    rep = factorize(store, "dense_0/W", rank=10, method="randomized", check_error=False)
    assert rep.passes == 2 * 2 + 2 and rep.error_estimated
    measured = np.linalg.norm(W0 - store.read("dense_0/U") @ store.read("dense_0/V")) / np.linalg.norm(W0)
    assert rep.rel_error == pytest.approx(measured, rel=1e-6)  # UV is a projection of W: the identity holds


def test_randomized_energy_widens_the_sketch_until_it_reaches_the_target():
    frac = np.cumsum(SIGMA**2) / np.sum(SIGMA**2)
    exact_rank = int(np.argmax(frac >= 0.99)) + 1
    assert exact_rank > compress.ENERGY_FIRST_RANK  # needs a second, wider sketch
    store = store_with(W0)
    rep = factorize(store, "dense_0/W", energy=0.99, method="randomized", seed=1)
    assert rep.rank >= exact_rank  # the sketch's σ̃ are lower bounds: never too small a rank
    assert rep.energy_kept >= 0.99
    assert rep.passes > 2 * 2 + 3  # two sketches
    measured = np.linalg.norm(W0 - store.read("dense_0/U") @ store.read("dense_0/V")) / np.linalg.norm(W0)
    assert measured <= np.sqrt(1 - 0.99) + 1e-9


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_randomized_on_disk_stores(backend, tmp_path):
    # Several shards (chunks) per parameter, not thousands: commits fsync each.
    store = open_store(tmp_path / "params", shard_bytes=2**16) if backend == "memmap" else open_store(
        tmp_path / "params.h5", chunk_bytes=2**14)
    store_with(TALL.astype(np.float32), store=store)
    rep = factorize(store, "dense_0/W", rank=8, budget=200_000)  # W is 1.28 MB
    assert rep.method == "randomized"
    assert rep.rel_error <= 1.05 * optimum(SIGMA, 8)
    store.close()
    with open_store(tmp_path / ("params.h5" if backend == "hdf5" else "params")) as again:  # committed
        assert again.keys() == ["dense_0/U", "dense_0/V", "dense_0/W"]
        U, V = again.read("dense_0/U"), again.read("dense_0/V")
    assert np.linalg.norm(TALL - U @ V) / np.linalg.norm(TALL) == pytest.approx(rep.rel_error, rel=1e-4)


class FileBackedStore(CopyingStore):
    """Parameters in memory-mapped files: their pages are not Python allocations, so tracemalloc sees only
    the buffers the code under test allocates (as with a disk store), not the store's own arrays."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def _create(self, info, init):
        arr = np.memmap(self.folder / f"{len(self._arrays)}.bin", dtype=info.dtype, mode="w+", shape=info.shape)
        if init is not None:
            for a in range(0, info.n_rows, 1000):
                arr[a: a + 1000] = init(a, min(info.n_rows, a + 1000))
        self._arrays[info.key] = arr


def test_a_matrix_many_times_the_budget_streams_under_it(tmp_path):
    """Every buffer the randomized path allocates (numpy arrays, LAPACK workspaces) stays under the budget."""
    m, n = 20_000, 64
    sigma = 0.9 ** np.arange(n)
    W = known(m, n, sigma, seed=3)
    store = store_with(W, store=FileBackedStore(tmp_path))
    budget = 1_000_000  # W is 10.2 MB
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        rep = factorize(store, "dense_0/W", rank=8, budget=budget)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert rep.method == "randomized"
    assert W.nbytes > 10 * budget
    assert peak <= budget, (peak, rep.working_bytes)
    assert rep.working_bytes <= budget
    assert rep.rel_error <= 1.05 * optimum(sigma, 8)


def test_scratch_store_keeps_the_temporary_basis():
    created = []

    class Recording(MemoryStore):
        def _create(self, info, init):
            created.append(info.key)
            super()._create(info, init)

    store, scratch = store_with(W0, store=Recording()), MemoryStore()
    created.clear()
    factorize(store, "dense_0/W", rank=4, method="randomized", scratch=scratch)
    assert created == ["dense_0/V", "dense_0/U"]
    assert scratch.keys() == []


def test_a_leftover_temporary_from_a_crash_is_replaced():
    store = store_with(W0)
    for key in compress.temp_keys("dense_0/W"):
        store.create(key, (M, 3), "float64")
    factorize(store, "dense_0/W", rank=4, method="randomized")
    assert store.keys() == ["dense_0/U", "dense_0/V", "dense_0/W"]


# -- what is written, what is kept -----------------------------------------------------------------

def test_drop_removes_w_and_its_optimizer_state():
    store = store_with(W0)
    store.create("dense_0/W:adagrad", (M, N), "float64")
    store.create("dense_0/b", (N,), "float64")
    rep = factorize(store, "dense_0/W", rank=4, drop=True)
    assert rep.dropped == ("dense_0/W", "dense_0/W:adagrad")
    assert store.keys() == ["dense_0/U", "dense_0/V", "dense_0/b"]


def test_keys_default_and_custom():
    assert compress.default_keys("dense_3/W") == ("dense_3/U", "dense_3/V")
    assert compress.default_keys("proj") == ("proj_U", "proj_V")
    store = store_with(W0, "proj")
    assert factorize(store, "proj", rank=2).keys == ("proj_U", "proj_V")
    assert factorize(store, "proj", rank=2, u_key="a/left", v_key="a/right").keys == ("a/left", "a/right")


def test_zero_matrix():
    store = store_with(np.zeros((20, 10)))
    for method in ("exact", "randomized"):
        rep = factorize(store, "dense_0/W", energy=0.9, method=method, u_key=f"{method}U", v_key=f"{method}V")
        assert (rep.rank, rep.rel_error, rep.energy_kept) == (1, 0.0, 1.0)
        assert not np.any(store.read(f"{method}U") @ store.read(f"{method}V"))


def test_report_summary_names_the_figures():
    rep = factorize(store_with(W0), "dense_0/W", rank=5, method="randomized")
    text = rep.summary()
    for part in ("'dense_0/W' (300 x 80 float64)", "rank         5", "24,000 -> 1,900", "7 over W",
                 "randomized (sketch width 15, 2 power iterations)", "measured", "(estimated)"):
        assert part in text, part
    assert rep.as_dict()["rank"] == 5


# -- refused, and nothing changed ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rank": 0}, ConfigError, (r"rank must be an integer in \[1, 80\] \(min\(m, n\) for 'dense_0/W' of "
                                    r"shape \(300, 80\)\), got 0")),
        ({"rank": 81}, ConfigError, r"in \[1, 80\].*got 81"),
        ({"rank": 2.0}, ConfigError, "got 2.0"),
        ({"rank": True}, ConfigError, "got True"),
        ({}, ConfigError, "exactly one of rank= or energy="),
        ({"rank": 3, "energy": 0.5}, ConfigError, "exactly one of"),
        ({"energy": 0.0}, ConfigError, r"energy must be a number in \(0, 1\], got 0.0"),
        ({"energy": 1.5}, ConfigError, "got 1.5"),
        ({"energy": float("nan")}, ConfigError, "got nan"),
        ({"rank": 3, "method": "svd"}, ConfigError, "method must be one of auto, exact, randomized, got 'svd'"),
        ({"rank": 3, "oversample": -1}, ConfigError, "oversample must be an integer >= 0"),
        ({"rank": 3, "budget": "lots"}, ConfigError, "budget must be"),
        ({"rank": 3, "u_key": "dense_0/W"}, ConfigError, "three different keys"),
        ({"rank": 3, "u_key": "x", "v_key": "x"}, ConfigError, "three different keys"),
        ({"rank": 3, "u_key": "dense_0/b"}, ParameterExists, "'dense_0/b' already exists"),
        ({"rank": 3, "u_key": "dense_0/b/U"}, ConfigError, "path prefix"),
        # "<param>:<state>" is optimizer state, which drop=True deletes with W: a factor named so went too
        ({"rank": 3, "u_key": "dense_0/W:U", "v_key": "dense_0/W:V", "drop": True}, ConfigError,
         r"u_key 'dense_0/W:U' has a ':', which names optimizer state"),
        ({"rank": 3, "v_key": "other:V"}, ConfigError, "v_key 'other:V' has a ':'"),
        ({"rank": 3, "budget": 4096, "method": "exact"}, BudgetError, "exact SVD of 'dense_0/W'"),
        ({"rank": 3, "budget": 4096}, BudgetError, r"needs a budget of at least \d+ bytes"),
        ({"energy": 0.5, "budget": 20000, "method": "randomized"}, BudgetError, "sketch width 42"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(kwargs, error, match):
    store = store_with(W0)
    store.create("dense_0/b", (N,), "float64")
    before = snapshot(store)
    with pytest.raises(error, match=match):
        factorize(store, "dense_0/W", **kwargs)
    assert_unchanged(store, before)


@pytest.mark.parametrize("shape, dtype, error, match", [
    ((5,), "float64", ShapeError, r"must be 2-D \(a weight matrix\) to factorize, got shape \(5,\)"),
    ((4, 3, 2), "float32", ShapeError, r"got shape \(4, 3, 2\)"),
    ((4, 3), "int32", ConfigError, "must hold floating-point values to factorize, got int32"),
])
def test_parameters_that_are_not_float_matrices_are_refused(shape, dtype, error, match):
    store = MemoryStore()
    store.create("p", shape, dtype)
    with pytest.raises(error, match=match):
        factorize(store, "p", rank=1)
    assert store.keys() == ["p"]


@pytest.mark.parametrize("backend", ["copying", "memmap"])
@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_and_change_nothing(backend, method, bad, tmp_path):
    store = make_store(backend, tmp_path)
    W = W0.copy()
    W[M - 2, 7] = bad  # in the last row block: the temporary basis exists when it is found
    store_with(W, store=store)
    before = snapshot(store)
    with pytest.raises(InputError, match=f"'dense_0/W' contains NaN or inf \\(first in row {M - 2}\\)"):
        factorize(store, "dense_0/W", rank=3, method=method, budget=None if method == "exact" else 200_000)
    assert_unchanged(store, before)


def test_missing_parameter_and_read_only_store(tmp_path):
    with pytest.raises(ParameterNotFound, match="no parameter 'nope'"):
        factorize(store_with(W0), "nope", rank=1)
    path = tmp_path / "p"
    with open_store(path) as s:
        store_with(W0, store=s)
    with open_store(path, read_only=True) as s:
        with pytest.raises(ReadOnlyError, match="read-only"):
            factorize(s, "dense_0/W", rank=1)
    with pytest.raises(ConfigError, match="must be an oocnet Store"):
        factorize({"dense_0/W": W0}, "dense_0/W", rank=1)


# -- linear evaluation (what the CLI's --eval prints) ----------------------------------------------

def _classification(m=M, n=N, rows=50, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, m))
    y = rng.integers(0, n, size=rows)
    return X, y


def _reference(X, W, y):
    logits = np.asarray(X @ W)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), np.mean(logits.argmax(1) == y)


def test_linear_eval_matches_numpy_before_and_after():
    X, y = _classification()
    store = store_with(W0)
    factorize(store, "dense_0/W", rank=6)
    U, V = store.read("dense_0/U"), store.read("dense_0/V")
    for kwargs, W in (({"w_key": "dense_0/W"}, W0), ({"u_key": "dense_0/U", "v_key": "dense_0/V"}, U @ V)):
        for data in (X, sp.csr_matrix(X)):
            got = linear_eval(store, data, y, budget=4096, **kwargs)  # several row blocks
            loss, acc = _reference(X, W, y)
            assert got["loss"] == pytest.approx(loss, rel=1e-10)
            assert got["accuracy"] == acc and got["n"] == 50


@pytest.mark.parametrize("X, y, match", [
    (np.ones((4, M + 1)), np.zeros(4, int), r"numeric \(N, 300\)"),
    (np.ones((4, M)), np.zeros(3, int), "4 integer labels"),
    (np.ones((4, M)), np.full(4, N), r"labels must lie in \[0, 80\)"),
    (np.full((4, M), np.nan), np.zeros(4, int), "NaN or inf"),
])
def test_linear_eval_refuses_bad_data(X, y, match):
    with pytest.raises(InputError, match=match):
        linear_eval(store_with(W0), X, y, w_key="dense_0/W")


# -- the command line -----------------------------------------------------------------------------

@pytest.fixture
def disk_store(tmp_path):
    path = tmp_path / "params"
    with open_store(path) as store:
        store_with(TALL.astype(np.float32), store=store)
    return path


def test_cli_compress_prints_the_figures(disk_store, capsys):
    assert cli.main(["compress", str(disk_store), "dense_0/W", "--rank", "8", "--budget", "256KiB"]) == 0
    out = capsys.readouterr().out
    assert "factorized 'dense_0/W' (4000 x 80 float32) into 'dense_0/U' (4000 x 8) and 'dense_0/V' (8 x 80)" in out
    assert "randomized" in out and "7 over W" in out and "320,000 -> 32,640" in out
    with open_store(disk_store) as store:
        assert store.keys() == ["dense_0/U", "dense_0/V", "dense_0/W"]
        U, V = store.read("dense_0/U"), store.read("dense_0/V")
    err = np.linalg.norm(TALL - U @ V) / np.linalg.norm(TALL)
    assert float(re.search(r"rel\. error   ([0-9.]+)", out).group(1)) == pytest.approx(err, rel=1e-4)
    # A second factorization of the same W: its default keys are taken, and the error names the options
    assert cli.main(["compress", str(disk_store), "dense_0/W", "--rank", "4", "--budget", "256KiB"]) == 2
    assert "--u-key, --v-key" in capsys.readouterr().err
    assert cli.main(["compress", str(disk_store), "dense_0/W", "--rank", "4", "--budget", "256KiB",
                     "--u-key", "r4/U", "--v-key", "r4/V"]) == 0
    with open_store(disk_store) as store:
        assert store.keys() == ["dense_0/U", "dense_0/V", "dense_0/W", "r4/U", "r4/V"]
        assert store.info("r4/U").shape == (4000, 4) and store.info("r4/V").shape == (4, 80)


def test_cli_compress_eval_prints_loss_and_accuracy_before_and_after(disk_store, tmp_path, capsys):
    X, y = _classification(m=4000)
    data = tmp_path / "eval.npz"
    csr = sp.csr_matrix(X)
    np.savez(data, X_data=csr.data, X_indices=csr.indices, X_indptr=csr.indptr, X_shape=csr.shape, y=y)
    assert cli.main(["compress", str(disk_store), "dense_0/W", "--energy", "0.9", "--eval", str(data),
                     "--drop"]) == 0
    out = capsys.readouterr().out
    with open_store(disk_store) as store:
        assert store.keys() == ["dense_0/U", "dense_0/V"]
        UV = store.read("dense_0/U").astype(float) @ store.read("dense_0/V")
    for when, W in (("before", TALL.astype(np.float32).astype(float)), ("after", UV)):
        loss, acc = _reference(X, W, y)
        got = re.search(when + r" +loss ([0-9.]+) +accuracy ([0-9.]+)", out)
        assert float(got.group(1)) == pytest.approx(loss, rel=1e-5), when
        assert float(got.group(2)) == pytest.approx(acc, abs=1e-4), when
    assert "exact (LAPACK gesdd)" in out


@pytest.mark.parametrize("args, match", [
    (["--rank", "0"], r"rank must be an integer in \[1, 80\]"),
    (["--energy", "1.5"], r"energy must be a number in \(0, 1\]"),
    (["--rank", "3", "--budget", "1KiB", "--method", "randomized"], "needs a budget of at least"),
    (["--rank", "3", "--eval", "missing.npz"], "--eval missing.npz: expected an .npz file"),
])
def test_cli_compress_errors_exit_2_and_change_nothing(disk_store, args, match, capsys):
    with open_store(disk_store) as store:
        before = snapshot(store)
    assert cli.main(["compress", str(disk_store), "dense_0/W", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oocnet compress: error: ")
    assert re.search(match, err), err
    with open_store(disk_store) as store:
        assert_unchanged(store, before)


def test_cli_compress_usage_errors(disk_store, tmp_path, capsys):
    for args in (["--rank", "3", "--energy", "0.5"], [], ["--rank", "three"], ["--energy", "most"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["compress", str(disk_store), "dense_0/W", *args])
        assert info.value.code == 2
    assert "usage: oocnet compress" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "nowhere"), "dense_0/W", "--rank", "3"]) == 2
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_a_write_failing_halfway_through_u_leaves_the_store_as_it_was():
    from oocnet.errors import StoreIOError

    class Failing(CopyingStore):
        writes = 0

        def _write_rows(self, key, start, value):
            if key == "dense_0/U":
                Failing.writes += 1
                if Failing.writes == 3:
                    raise StoreIOError("disk full")
            super()._write_rows(key, start, value)

    store = store_with(TALL, store=Failing())
    before = snapshot(store)
    with pytest.raises(StoreIOError, match="disk full"):
        factorize(store, "dense_0/W", rank=4, budget=200_000)
    assert Failing.writes == 3  # U was being written block by block
    assert_unchanged(store, before)


def test_randomized_energy_target_reaches_full_rank_when_it_must():
    W = np.random.default_rng(2).standard_normal((60, 40))
    sv = np.linalg.svd(W, compute_uv=False)
    for energy in (0.999, 1.0):
        s = open_store(None)
        s.create("W", W.shape, "float64", init=W)
        r = factorize(s, "W", energy=energy, method="randomized")
        want = int(np.searchsorted(np.cumsum(sv**2) / (sv**2).sum(), energy * (1 - 1e-12))) + 1
        assert r.rank == want and r.energy_kept >= energy * (1 - 1e-9)
        np.testing.assert_allclose(r.rel_error, np.sqrt((sv[r.rank:] ** 2).sum() / (sv**2).sum()), atol=1e-9)


def test_exact_figures_do_not_overflow_for_huge_entries():
    W = np.random.default_rng(2).standard_normal((60, 40))
    sv = np.linalg.svd(W, compute_uv=False)
    s = open_store(None)
    s.create("W", W.shape, "float64", init=W * 1e160)
    r = factorize(s, "W", rank=3, method="exact")
    np.testing.assert_allclose(r.rel_error, np.sqrt((sv[3:] ** 2).sum() / (sv**2).sum()), rtol=1e-10)
    np.testing.assert_allclose(r.energy_kept, (sv[:3] ** 2).sum() / (sv**2).sum(), rtol=1e-10)
