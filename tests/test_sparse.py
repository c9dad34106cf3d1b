"""Sparse input: CSR / id batches, the Embedding layer's row-only updates, and sparse-aware optimizers."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import oocnet as oc
from oocnet.errors import ConfigError, InputError, StoreError
from oocnet.sparse import as_csr, prepare
from oocnet.testing import numerical_gradient, relative_error

from test_outofcore import make_store
from test_paging import CopyingStore

V, D, K = 120, 5, 3


def random_bags(rng, n=6, max_len=5, weighted=True):
    """A B x V CSR of multi-hot bags with repeated ids, unsorted indices and empty rows."""
    rows = []
    for i in range(n):
        length = 0 if i == 2 else rng.integers(1, max_len + 1)
        rows.append(rng.integers(0, V, size=length))
    rows[0] = np.array([7, 3, 7, 7])  # repeats within a row
    indptr = np.cumsum([0] + [len(r) for r in rows])
    data = rng.uniform(0.5, 2.0, size=indptr[-1]) if weighted else np.ones(indptr[-1])
    X = sp.csr_matrix((data, np.concatenate(rows), indptr), shape=(n, V))
    X.has_canonical_format = False
    return X


# -- batches ------------------------------------------------------------------------------------

def test_id_forms_become_the_same_csr():
    dense = np.zeros((3, 10))
    dense[0, 4] = dense[1, 2] = dense[2, 4] = 1
    for X in (np.array([4, 2, 4]), np.array([[4], [2], [4]]), [[4], [2], [4]], sp.csr_matrix(dense), dense):
        np.testing.assert_array_equal(as_csr(X, 10).toarray(), dense)


def test_repeated_and_unsorted_ids_are_canonicalised_not_refused():
    X = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0]), np.array([5, 2, 5, 1]), np.array([0, 3, 4])), shape=(2, 10))
    before = (X.data.copy(), X.indices.copy())
    csr = as_csr(X, 10)
    assert csr.has_canonical_format
    np.testing.assert_array_equal(csr.toarray(), X.toarray())
    np.testing.assert_array_equal(csr[0].indices, [2, 5])
    np.testing.assert_array_equal(X.data, before[0])  # the caller's matrix is not touched
    np.testing.assert_array_equal(X.indices, before[1])


def test_prepare_remaps_onto_touched_rows_only():
    b = prepare([[9, 3, 9], [], [1000]], 5000)
    np.testing.assert_array_equal(b.rows, [3, 9, 1000])
    assert b.local.shape == (3, 3)
    np.testing.assert_array_equal(b.local.toarray(), [[1, 2, 0], [0, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([1, 120]), r"\[0, 120\), got ids in \[1, 120\]"),
        (np.array([-1, 3]), r"\[0, 120\)"),
        ([[1, 2], [120]], r"row 1 must lie in \[0, 120\)"),
        (np.array([1.5, 2.0]), "float array of width 120"),
        ([[1.5]], "integer ids"),
        (sp.csr_matrix(np.ones((2, 119))), "must have 120 columns"),
        (sp.csr_matrix(np.array([[np.nan] + [0.0] * 119])), "NaN or inf"),
        (sp.csr_matrix(np.array([[np.inf] + [0.0] * 119])), "NaN or inf"),
        (np.ones((2, 119)), "must have 120 columns"),
        ("words", "dtype <U5"),
        ([[1, [2]], [3]], r"row 0 of an id-list batch must be a flat list of integer ids, got \[1, \[2\]\]"),
        ([[1, 2], [3, [4, 5]]], "row 1 of an id-list batch"),
        (np.eye(2, 120, dtype=int), "looks like a one-hot or count matrix"),
        (None, "got NoneType"),
        ({"ids": [1, 2]}, "got dict"),
        (np.full((2, 120), 1e300), "beyond the range of float32"),
        (sp.csr_matrix(np.full((2, 120), 1e300)), "beyond the range of float32"),
    ],
)
def test_bad_sparse_batches_are_refused_before_anything_is_written(X, match, tmp_path):
    model = oc.Sequential([oc.Embedding(V, D), oc.Dense(D, K)], store=CopyingStore(), dtype="float32")
    before = model.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refused batch is told by the error alone, not by numpy's warnings too
        with pytest.raises(InputError, match=match):
            model.train_step(X, np.zeros(2, int), oc.SoftmaxCrossEntropy(), oc.SGD(0.1))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    model.close()


def test_embedding_must_be_first():
    with pytest.raises(ConfigError, match="must be the first layer"):
        oc.Sequential([oc.Dense(3, V), oc.Embedding(V, D)])


# -- equivalence with one-hot input through Dense -------------------------------------------------

def twin_models(store_a=None, store_b=None, activation="tanh"):
    sparse = oc.Sequential([oc.Embedding(V, D, activation=activation), oc.Dense(D, K)], store=store_a,
                           seed=1, dtype="float64")
    dense = oc.Sequential([oc.Dense(V, D, activation=activation, bias=False), oc.Dense(D, K)], store=store_b,
                          seed=2, dtype="float64")
    sd = sparse.state_dict()
    dense.load_state_dict({"dense_0/W": sd["embedding_0/W"], "dense_1/W": sd["dense_1/W"],
                           "dense_1/b": sd["dense_1/b"]})
    return sparse, dense


@pytest.mark.parametrize("backend", ["memory", "copying", "memmap", "hdf5"])
@pytest.mark.parametrize("opt", [lambda: oc.SGD(0.1), lambda: oc.SGD(0.05, momentum=0.9), lambda: oc.Adagrad(0.1),
                                 lambda: oc.RowwiseAdagrad(0.1), lambda: oc.Adam(0.01)],
                         ids=["sgd", "momentum", "adagrad", "rowwise_adagrad", "adam"])
def test_embedding_trains_like_dense_one_hot(backend, opt, tmp_path):
    store = None if backend == "memory" else make_store(backend, tmp_path)
    sparse, dense = twin_models(store)
    o_sparse, o_dense = opt(), opt()
    rng = np.random.default_rng(0)
    touched = set()
    for _ in range(15):
        X = random_bags(rng)
        y = rng.integers(0, K, size=X.shape[0])
        touched |= set(X.indices.tolist())
        ls = sparse.train_step(X, y, oc.SoftmaxCrossEntropy(), o_sparse)
        ld = dense.train_step(X.toarray(), y, oc.SoftmaxCrossEntropy(), o_dense)
        lazy = isinstance(o_sparse, oc.SGD) and o_sparse.momentum or isinstance(o_sparse, oc.Adam)
        if not lazy:
            assert ls == pytest.approx(ld, rel=1e-10)
    a, b = sparse.state_dict(), dense.state_dict()
    if lazy:
        # Lazy rules leave rows a batch skipped alone, where the dense rule still moves them
        # (momentum, Adam's moments), so the two differ by design; what must hold is that rows
        # never touched are unchanged in the sparse model.  Adam's own formula is tested below.
        untouched = sorted(set(range(V)) - touched)
        assert untouched
        init = twin_models()[0].state_dict()["embedding_0/W"]
        np.testing.assert_array_equal(a["embedding_0/W"][untouched], init[untouched])
        return
    np.testing.assert_allclose(a["embedding_0/W"], b["dense_0/W"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a["dense_1/W"], b["dense_1/W"], rtol=1e-10, atol=1e-12)


def lazy_adam_reference(W, steps, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Lazy Adam written from its formula over the whole table; rows with no id in a batch are skipped."""
    m, v, t = np.zeros_like(W), np.zeros_like(W), np.zeros(W.shape[0], int)
    for rows, g in steps:
        t[rows] += 1
        m[rows] = b1 * m[rows] + (1 - b1) * g
        v[rows] = b2 * v[rows] + (1 - b2) * g * g
        mh = m[rows] / (1 - b1 ** t[rows])[:, None]
        vh = v[rows] / (1 - b2 ** t[rows])[:, None]
        W[rows] -= lr * mh / (np.sqrt(vh) + eps)
    return W, m, v, t


@pytest.mark.parametrize("backend", ["memory", "memmap"])
def test_lazy_adam_matches_its_formula(backend, tmp_path):
    store = None if backend == "memory" else make_store(backend, tmp_path)
    model = oc.Sequential([oc.Embedding(V, D)], store=store, seed=3, dtype="float64")
    W = model.state_dict()["embedding_0/W"].copy()
    rng = np.random.default_rng(1)
    opt, loss = oc.Adam(lr=0.01), oc.HalfSquaredError()
    steps = []
    for _ in range(4):
        X = random_bags(rng)
        y = rng.normal(size=(X.shape[0], D))
        g = model.gradients(X, y, loss)["embedding_0/W"]
        rows = np.unique(X.indices)
        steps.append((rows, g[rows]))
        model.train_step(X, y, loss, opt)
    W, m, v, t = lazy_adam_reference(W, steps, 0.01)
    sd = model.state_dict(include_state=True)
    np.testing.assert_allclose(sd["embedding_0/W"], W, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sd["embedding_0/W:adam_m"], m, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(sd["embedding_0/W:adam_t"], t)
    assert t.min() == 0 < t.max()  # some rows never touched, some touched several times


def test_rowwise_adagrad_against_formula():
    model = oc.Sequential([oc.Embedding(V, D)], seed=3, dtype="float64")
    W = model.state_dict()["embedding_0/W"].copy()
    G = np.zeros(V)
    rng = np.random.default_rng(2)
    loss, opt = oc.HalfSquaredError(), oc.RowwiseAdagrad(lr=0.1, eps=1e-6)
    for _ in range(5):
        X = random_bags(rng)
        y = rng.normal(size=(X.shape[0], D))
        g = model.gradients(X, y, loss)["embedding_0/W"]
        model.train_step(X, y, loss, opt)
        rows = np.unique(X.indices)
        G[rows] += np.mean(g[rows] ** 2, axis=1)
        W[rows] -= 0.1 * g[rows] / (np.sqrt(G[rows]) + 1e-6)[:, None]
    sd = model.state_dict(include_state=True)
    np.testing.assert_allclose(sd["embedding_0/W"], W, rtol=1e-12)
    np.testing.assert_allclose(sd["embedding_0/W:rowwise_adagrad"], G, rtol=1e-12)
    assert sd["embedding_0/W:rowwise_adagrad"].shape == (V,)


def test_embedding_gradient_by_central_differences():
    model = oc.Sequential([oc.Embedding(V, D, activation="tanh"), oc.Dense(D, K)], seed=4, dtype="float64")
    rng = np.random.default_rng(3)
    X, y = random_bags(rng), rng.integers(0, K, size=6)
    loss = oc.SoftmaxMarginHinge(margin=0.5)
    analytic = model.gradients(X, y, loss)
    params = model.state_dict()
    for key in params:
        def f(v, key=key):
            model.load_state_dict({**params, key: v})
            return model.evaluate(X, y, loss)

        num = numerical_gradient(f, params[key].copy())
        assert relative_error(analytic[key], num) < 1e-6, key
    model.load_state_dict(params)
    untouched = sorted(set(range(V)) - set(X.indices.tolist()))
    assert np.all(analytic["embedding_0/W"][untouched] == 0)


def test_empty_rows_and_all_empty_batches():
    model = oc.Sequential([oc.Embedding(V, D), oc.Dense(D, K)], seed=0, dtype="float64")
    before = model.state_dict()["embedding_0/W"]
    out = model.predict([[], [], []])
    np.testing.assert_allclose(out, np.tile(model.state_dict()["dense_1/b"], (3, 1)))
    model.train_step([[], [1]], [0, 1], oc.SoftmaxCrossEntropy(), oc.SGD(0.1))
    after = model.state_dict()["embedding_0/W"]
    changed = np.flatnonzero(np.any(after != before, axis=1))
    np.testing.assert_array_equal(changed, [1])


# -- a step costs what the batch touches -----------------------------------------------------------

class RowLimitedStore(CopyingStore):
    """Refuses to read or write more than ``limit`` rows of any parameter at once."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def _guard(self, n, key):
        if n > self.limit:
            raise StoreError(f"refused: {n} rows of {key} at once")

    def _read_rows(self, key, start, stop, out):
        self._guard(stop - start, key)
        super()._read_rows(key, start, stop, out)

    def _read_index(self, key, rows, out):
        self._guard(len(rows), key)
        super()._read_index(key, rows, out)

    def _write_rows(self, key, start, value):
        self._guard(len(value), key)
        super()._write_rows(key, start, value)


@pytest.mark.parametrize("opt", [oc.SGD(0.1), oc.Adagrad(0.1), oc.RowwiseAdagrad(0.1), oc.Adam(0.01)],
                         ids=["sgd", "adagrad", "rowwise", "adam"])
def test_no_vocabulary_sized_work_in_a_step(opt):
    n_words, dim = 1_000_000, 4
    store = RowLimitedStore(limit=1000)
    store._create = store._create  # parameters are created in chunks below the guard
    model = oc.Sequential([oc.Embedding(n_words, dim, init="zeros"), oc.Dense(dim, 2)], store=store,
                          budget="4MiB", seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, n_words, size=20).tolist() for _ in range(32)] for _ in range(3)]
    model.train_step(batches[0], np.zeros(32, int), oc.SoftmaxCrossEntropy(), opt)  # creates the state
    tracemalloc.start()
    try:
        for X in batches[1:]:
            model.train_step(X, np.ones(32, int), oc.SoftmaxCrossEntropy(), opt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One float32 value per word would be 4 MB; a step allocates a small fraction of that.
    assert peak < n_words * 4 / 4, peak
    W = store._arrays["embedding_0/W"]
    touched = np.unique(np.concatenate([np.concatenate(b) for b in batches]))
    assert np.count_nonzero(np.any(W != 0, axis=1)) <= touched.size


@pytest.mark.parametrize("budget", [17000, 18000, 20000])  # caches of 69-86 rows, V = 120
def test_row_cache_filling_mid_batch_equals_ram(budget, tmp_path):
    """Regression: when the row cache filled up in the middle of a batch, CLOCK could hand out a
    slot it had just given to another row (two rows in one slot)."""
    ram, disk = (oc.Sequential([oc.Embedding(V, D), oc.Dense(D, K)], store=s, budget=b, seed=1, dtype="float64")
                 for s, b in ((None, None), (make_store("memmap", tmp_path), budget)))
    rng = np.random.default_rng(3)
    for _ in range(12):
        X = random_bags(rng, n=10, max_len=8)
        y = rng.integers(0, K, size=X.shape[0])
        assert disk.train_step(X, y, oc.SoftmaxCrossEntropy(), oc.SGD(0.1)) == ram.train_step(
            X, y, oc.SoftmaxCrossEntropy(), oc.SGD(0.1))
    capacity = disk.pager._row_caches["embedding_0/W"].capacity
    assert 64 <= capacity < V  # the cache filled and evicted during the run
    for k, v in ram.state_dict().items():
        np.testing.assert_array_equal(disk.state_dict()[k], v)


@pytest.mark.parametrize("opt", [lambda: oc.Adam(0.1), lambda: oc.SGD(0.1, momentum=0.9)])
def test_stored_zeros_do_not_touch_rows_for_lazy_optimizers(opt):
    """A CSR with an explicit 0 (or duplicates cancelling) equals its dense form: it touches no extra row."""
    plain = sp.csr_matrix(([1.0], [2], [0, 1]), shape=(1, 5))
    stored_zero = sp.csr_matrix(([1.0, 0.0], [2, 1], [0, 2]), shape=(1, 5))
    cancelling = sp.csr_matrix(([1.0, 3.0, -3.0], [2, 4, 4], [0, 3]), shape=(1, 5))
    got = []
    for X in (plain, stored_zero, cancelling):
        assert np.array_equal(X.toarray(), plain.toarray())
        model = oc.Sequential([oc.Embedding(5, 2), oc.Dense(2, 2)], dtype="float64", seed=0)
        o = opt()
        model.train_step([[1, 4]], [0], "softmax_cross_entropy", o)  # rows 1 and 4 get moments/velocity
        model.train_step(X, [1], "softmax_cross_entropy", o)
        got.append(model.state_dict()["embedding_0/W"])
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_array_equal(got[2], got[0])
    assert prepare(stored_zero, 5).rows.tolist() == [2]


@pytest.mark.parametrize("opt", [lambda: oc.Adam(0.1), lambda: oc.SGD(0.1, momentum=0.9)])
def test_entries_past_indptr_end_are_no_part_of_the_batch(opt):
    """scipy lets indices/data run past indptr[-1]; X.toarray() ignores them, and so must a step."""
    tail = sp.csr_matrix((np.ones(3), np.array([1, 2, 3]), np.array([0, 1, 3])), shape=(2, 10))
    tail.indptr[-1] = 2  # id 3 is stored, but past the end
    far = sp.csr_matrix((np.ones(3), np.array([1, 2, 99]), np.array([0, 1, 2])), shape=(2, 10))  # out of range
    got = []
    for X in (sp.csr_matrix(tail.toarray()), tail, far):
        model = oc.Sequential([oc.Embedding(10, 3), oc.Dense(3, 2)], dtype="float64", seed=0)
        o = opt()
        model.train_step([[3]], [0], "softmax_cross_entropy", o)  # row 3 gets moments / velocity
        model.train_step(X, [0, 1], "softmax_cross_entropy", o)
        got.append(model.state_dict(include_state=True))
    for other in got[1:]:
        for k in got[0]:
            np.testing.assert_array_equal(other[k], got[0][k], err_msg=k)


def test_a_malformed_csr_structure_is_an_input_error():
    model = oc.Sequential([oc.Embedding(50, 3), oc.Dense(3, 2)], dtype="float64", seed=0)
    before = model.state_dict()
    decreasing = sp.csr_matrix((np.ones(2), np.array([1, 2]), np.array([0, 2, 1])), shape=(2, 50))
    short = sp.csr_matrix((np.ones(2), np.array([1, 2]), np.array([0, 1, 2])), shape=(2, 50))
    short.indptr[-1] = 5  # past the 2 indices
    for X in (decreasing, short):
        for call in (lambda: model.predict(X), lambda: model.train_step(X, [0, 1], "softmax_cross_entropy",
                                                                         oc.SGD(0.1))):
            with pytest.raises(InputError, match="CSR structure is malformed"):
                call()
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items()) and model.step == 0


def test_complex_and_wrapping_ids_are_input_errors():
    with pytest.raises(InputError, match="real numbers"):
        prepare(sp.csr_matrix(np.eye(2, 10, dtype=complex)), 10)
    with pytest.raises(InputError, match=r"\[1, 18446744073709551615\]"):  # not wrapped to -1
        prepare(np.array([1, 2**64 - 1], dtype=np.uint64), 10)
    model = oc.Sequential([oc.Dense(3, 2)], dtype="float64")
    with pytest.raises(InputError, match="real numbers, got complex"):
        model.train_step(np.ones((2, 3)) + 1j, [0, 1], "softmax_cross_entropy", oc.SGD(0.1))
    with pytest.raises(InputError, match="real numbers"):
        model.train_step(np.ones((2, 3)), np.ones((2, 2)) * 1j, "half_squared_error", oc.SGD(0.1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_smallest_budget_a_model_accepts_runs_a_one_row_batch(dtype, tmp_path):
    """The minimum named when a model is built must let it train and predict one id, not only be built."""
    import re

    layers = lambda: [oc.Embedding(5000, 16), oc.Dense(16, 4)]  # noqa: E731
    with pytest.raises(oc.errors.BudgetError, match="use budget >=") as info:
        oc.Sequential(layers(), store=tmp_path / "tiny", budget=64, dtype=dtype)
    least = int(re.search(r"budget >= (\d+) bytes", str(info.value)).group(1))
    with pytest.raises(oc.errors.BudgetError):
        oc.Sequential(layers(), store=tmp_path / "below", budget=least - 1, dtype=dtype)
    model = oc.Sequential(layers(), store=tmp_path / "least", budget=least, dtype=dtype, seed=0)
    ref = oc.Sequential(layers(), dtype=dtype, seed=0)
    for m in (model, ref):
        m.train_step([[7]], [1], "softmax_cross_entropy", oc.SGD(0.1))
    for ids in ([[7]], [[8]]):  # one row at a time: the least budget holds one
        np.testing.assert_allclose(model.predict(ids), ref.predict(ids), rtol=1e-6)
    model.close()


@pytest.mark.parametrize("opt", [oc.Adam, oc.RowwiseAdagrad])
def test_the_budget_a_first_step_names_for_an_optimizer_with_state_works(opt, tmp_path):
    """It named twice the batch's rows, which an optimizer's state rows can need more than: a budget it named
    was itself refused."""
    import re

    budget, tried = 512, []
    while True:
        model = oc.Sequential([oc.Embedding(5000, 16), oc.Dense(16, 3)], store=tmp_path / f"p{budget}",
                              budget=budget, dtype="float64")
        try:
            model.train_step([[1]], [0], "softmax_cross_entropy", opt())
            break
        except oc.errors.BudgetError as exc:
            tried.append(budget)
            budget = int(re.search(r"budget >= (\d+) bytes", str(exc)).group(1))
            assert budget > tried[-1]
        finally:
            model.close()
    assert len(tried) == 1, tried  # the first refusal named a budget that works


def test_a_batch_larger_than_the_default_room_is_taken_from_the_row_caches_when_the_budget_holds_it(tmp_path):
    """A batch's gathered rows may use up to half the budget, not just 32 MiB; the refusal names a budget that works."""
    import re

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 10**6, (100_000, 1)), rng.integers(0, 8, 100_000)
    layers = lambda: [oc.Embedding(10**6, 64, activation="tanh"), oc.Dense(64, 8)]  # noqa: E731
    model = oc.Sequential(layers(), store=tmp_path / "small", budget="64MiB")
    with pytest.raises(oc.OocnetError, match="budget >=") as info:
        model.train_step(X, y, "softmax_cross_entropy", oc.RowwiseAdagrad(0.1))
    model.close()
    enough = int(re.search(r"budget >= (\d+) bytes", str(info.value)).group(1))
    model = oc.Sequential(layers(), store=tmp_path / "enough", budget=enough)
    model.train_step(X, y, "softmax_cross_entropy", oc.RowwiseAdagrad(0.1))  # the suggested budget works
    model.train_step(X[:5120].reshape(256, 20), y[:256], "softmax_cross_entropy", oc.RowwiseAdagrad(0.1))
    assert model.io_stats["peak_resident_bytes"] <= enough
    model.close()
