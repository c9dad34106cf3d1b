"""Factorized layers: FactorizedDense and FactorizedEmbedding against Dense, one-hot twins and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import oocnet as oc
from oocnet import compress
from oocnet.errors import ConfigError, NumericalError, ShapeError
from oocnet.store import open_store
from oocnet.testing import gradcheck_model

from test_outofcore import make_store
from test_paging import CopyingStore
from test_sparse import random_bags

V, D, K, R = 120, 5, 3, 2


# -- what the layers compute ---------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_factorized_dense_forward_is_dense_with_the_product(bias):
    rng = np.random.default_rng(0)
    U, Vm = rng.normal(size=(6, 3)), rng.normal(size=(3, 4))
    fact = oc.Sequential([oc.FactorizedDense(6, 4, 3, activation="tanh", bias=bias, init=(U, Vm))],
                         dtype="float64")
    dense = oc.Sequential([oc.Dense(6, 4, activation="tanh", bias=bias, init=U @ Vm)], dtype="float64")
    if bias:
        b = rng.normal(size=4)
        fact.load_state_dict({"factorized_dense_0/b": b}, strict=False)
        dense.load_state_dict({"dense_0/b": b}, strict=False)
    X = rng.normal(size=(7, 6))
    np.testing.assert_allclose(fact.predict(X), dense.predict(X), rtol=1e-12)
    np.testing.assert_allclose(fact.predict(X), np.tanh(X @ U @ Vm + (b if bias else 0)), rtol=1e-12)
    assert fact.n_params() == 6 * 3 + 3 * 4 + 4 * bias


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("loss", [oc.SoftmaxCrossEntropy(), oc.HalfSquaredError()], ids=["xent", "half_sq"])
def test_factorized_dense_gradients_by_central_differences(activation, loss):
    model = oc.Sequential([oc.FactorizedDense(6, 5, 2, activation=activation), oc.FactorizedDense(5, 3, 3)],
                          seed=3, dtype="float64")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 6))
    y = rng.integers(0, 3, size=7) if isinstance(loss, oc.SoftmaxCrossEntropy) else rng.normal(size=(7, 3))
    errors = gradcheck_model(model, X, y, loss)
    assert set(errors) == {f"factorized_dense_{i}/{p}" for i in (0, 1) for p in "UVb"}
    assert max(errors.values()) < 1e-6, errors


def test_factorized_embedding_gradients_by_central_differences():
    model = oc.Sequential([oc.FactorizedEmbedding(V, D, R, activation="tanh"), oc.Dense(D, K)], seed=4,
                          dtype="float64")
    rng = np.random.default_rng(3)
    X, y = random_bags(rng), rng.integers(0, K, size=6)
    errors = gradcheck_model(model, X, y, oc.SoftmaxMarginHinge(margin=0.5))
    assert max(errors.values()) < 1e-6, errors
    grad = model.gradients(X, y, oc.SoftmaxCrossEntropy())["factorized_embedding_0/U"]
    untouched = sorted(set(range(V)) - set(X.indices.tolist()))
    assert np.all(grad[untouched] == 0)


# -- sparse == dense one-hot; paged == in RAM ------------------------------------------------------

def twin_models(store_a=None, store_b=None):
    sparse = oc.Sequential([oc.FactorizedEmbedding(V, D, R, activation="tanh"), oc.Dense(D, K)], store=store_a,
                           seed=1, dtype="float64")
    dense = oc.Sequential([oc.FactorizedDense(V, D, R, activation="tanh", bias=False), oc.Dense(D, K)],
                          store=store_b, seed=2, dtype="float64")
    sd = sparse.state_dict()
    dense.load_state_dict({"factorized_dense_0/U": sd["factorized_embedding_0/U"],
                           "factorized_dense_0/V": sd["factorized_embedding_0/V"],
                           "dense_1/W": sd["dense_1/W"], "dense_1/b": sd["dense_1/b"]})
    return sparse, dense


@pytest.mark.parametrize("backend", ["memory", "copying", "memmap"])
@pytest.mark.parametrize("opt", [lambda: oc.SGD(0.1), lambda: oc.Adagrad(0.1)], ids=["sgd", "adagrad"])
def test_factorized_embedding_trains_like_factorized_dense_one_hot(backend, opt, tmp_path):
    store = None if backend == "memory" else make_store(backend, tmp_path)
    sparse, dense = twin_models(store)
    o_sparse, o_dense = opt(), opt()
    rng = np.random.default_rng(0)
    for _ in range(12):
        X = random_bags(rng)
        y = rng.integers(0, K, size=X.shape[0])
        ls = sparse.train_step(X, y, oc.SoftmaxCrossEntropy(), o_sparse)
        ld = dense.train_step(X.toarray(), y, oc.SoftmaxCrossEntropy(), o_dense)
        assert ls == pytest.approx(ld, rel=1e-10)
    a, b = sparse.state_dict(), dense.state_dict()
    for p in "UV":
        np.testing.assert_allclose(a[f"factorized_embedding_0/{p}"], b[f"factorized_dense_0/{p}"],
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a["dense_1/W"], b["dense_1/W"], rtol=1e-10, atol=1e-12)
    sparse.close()


def _train(model, data, opt):
    losses = [model.train_step(X, y, oc.SoftmaxCrossEntropy(), opt) for X, y in data]
    return losses, model.state_dict(include_state=True)


@pytest.mark.parametrize("backend", ["copying", "memmap", "hdf5"])
def test_paged_factorized_dense_matches_ram(backend, tmp_path):
    layers = lambda: [oc.FactorizedDense(40, 30, 6, activation="tanh"), oc.FactorizedDense(30, 4, 4)]  # noqa: E731
    rng = np.random.default_rng(2)
    data = [(rng.normal(size=(9, 40)), rng.integers(0, 4, size=9)) for _ in range(6)]
    ref_losses, ref = _train(oc.Sequential(layers(), seed=5, dtype="float64"), data, oc.SGD(0.05, momentum=0.9))
    model = oc.Sequential(layers(), store=make_store(backend, tmp_path), budget=2500, seed=5, dtype="float64")
    losses, got = _train(model, data, oc.SGD(0.05, momentum=0.9))
    tiles = model._tiles(oc.SGD(0.05, momentum=0.9))
    assert len(tiles["factorized_dense_0/U"]) > 1  # U is processed in row tiles
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert model.pager.stats.peak_resident_bytes <= 2500
    model.close()


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_paged_factorized_embedding_matches_ram(backend, tmp_path):
    layers = lambda: [oc.FactorizedEmbedding(V, D, R, activation="tanh"), oc.Dense(D, K)]  # noqa: E731
    rng = np.random.default_rng(4)
    data = [(random_bags(rng), rng.integers(0, K, size=6)) for _ in range(10)]
    ref_losses, ref = _train(oc.Sequential(layers(), seed=6, dtype="float64"), data, oc.RowwiseAdagrad(0.1))
    # A budget whose row cache holds a fraction of the table: rows are evicted and re-read.
    model = oc.Sequential(layers(), store=make_store(backend, tmp_path), budget=4096, seed=6, dtype="float64")
    losses, got = _train(model, data, oc.RowwiseAdagrad(0.1))
    assert model.io_stats["row_misses"] > 0
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    model.close()


class RowRecordingStore(CopyingStore):
    """Records which rows of each parameter are read and written, and by which call."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, str, np.ndarray]] = []

    def _read_rows(self, key, start, stop, out):
        self.log.append(("read_rows", key, np.arange(start, stop)))
        super()._read_rows(key, start, stop, out)

    def _read_index(self, key, rows, out):
        self.log.append(("read_index", key, np.array(rows)))
        super()._read_index(key, rows, out)

    def _write_rows(self, key, start, value):
        self.log.append(("write_rows", key, np.arange(start, start + len(value))))
        super()._write_rows(key, start, value)

    def _write_index(self, key, rows, value):
        self.log.append(("write_index", key, np.array(rows)))
        super()._write_index(key, rows, value)


def test_an_embedding_step_touches_only_the_batch_rows_of_u_and_all_of_v():
    store = RowRecordingStore()
    model = oc.Sequential([oc.FactorizedEmbedding(V, D, R), oc.Dense(D, K)], store=store, seed=0, dtype="float64")
    before = model.state_dict()
    store.log.clear()
    X = [[3, 17, 17], [40], []]
    model.train_step(X, [0, 1, 2], oc.SoftmaxCrossEntropy(), oc.Adagrad(0.1))
    model.commit()
    touched = {3, 17, 40}
    for call, key, rows in store.log:
        if key.startswith("factorized_embedding_0/U"):  # U and its Adagrad state
            assert call in ("read_index", "write_index"), (call, key)
            assert set(rows.tolist()) <= touched, (call, key, rows)
    assert any(c == "write_index" and k == "factorized_embedding_0/U" for c, k, _ in store.log)
    after = model.state_dict()
    changed = np.flatnonzero(np.any(after["factorized_embedding_0/U"] != before["factorized_embedding_0/U"], axis=1))
    assert set(changed.tolist()) == touched
    assert np.all(after["factorized_embedding_0/V"] != before["factorized_embedding_0/V"])


def test_a_failed_step_gives_the_gathered_rows_back():
    store = CopyingStore()
    model = oc.Sequential([oc.FactorizedEmbedding(V, D, R), oc.Dense(D, K)], store=store, budget=2**20, seed=0,
                          dtype="float64")
    model.train_step([[1, 2]], [0], oc.SoftmaxCrossEntropy(), oc.SGD(0.1))
    resident = model.pager.resident_bytes
    bad = oc.CustomLoss(value=lambda z, y: float("nan"), delta=lambda z, y: np.zeros_like(z))
    with pytest.raises(NumericalError):
        model.train_step([[5, 6, 7]], np.zeros((1, K)), bad, oc.SGD(0.1))
    assert model.pager.resident_bytes == resident


# -- fine-tuning what compress left ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_fine_tune_a_compressed_dense_layer(backend, tmp_path):
    path = tmp_path / ("p.h5" if backend == "hdf5" else "p")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 20))
    y = np.argmax(X @ rng.normal(size=(20, 4)), axis=1)
    loss, opt = oc.SoftmaxCrossEntropy(reduction="mean"), oc.SGD(0.2)
    with oc.Sequential([oc.Dense(20, 16, activation="tanh"), oc.Dense(16, 4)], store=path, seed=0) as model:
        for _ in range(30):
            model.train_step(X, y, loss, opt)
    with open_store(path) as store:
        report = compress.factorize(store, "dense_0/W", rank=4)
        assert report.keys == ("dense_0/U", "dense_0/V")
        W, U, Vm, b = (store.read(k) for k in ("dense_0/W", "dense_0/U", "dense_0/V", "dense_0/b"))
    fact = oc.Sequential([oc.FactorizedDense(20, 16, 4, activation="tanh", name="dense_0"), oc.Dense(16, 4)],
                         store=path, seed=99)
    # The model starts from the factors, not from its initialiser.
    h = np.tanh(X.astype(np.float32) @ U @ Vm + b)
    sd = fact.state_dict()
    np.testing.assert_allclose(fact.predict(X), h @ sd["dense_1/W"] + sd["dense_1/b"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sd["dense_0/U"], U)
    assert np.linalg.norm(W - U @ Vm) / np.linalg.norm(W) == pytest.approx(report.rel_error, rel=1e-4)
    losses = [fact.train_step(X, y, loss, opt) for _ in range(40)]
    assert losses[-1] < 0.8 * losses[0]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))  # full-batch GD at a small step: monotone
    fact.close()


def test_fine_tune_a_compressed_embedding(tmp_path):
    path = tmp_path / "p"
    rng = np.random.default_rng(1)
    data = [(random_bags(rng, n=16), rng.integers(0, K, size=16)) for _ in range(8)]
    loss, opt = oc.SoftmaxCrossEntropy(reduction="mean"), oc.SGD(0.3)
    with oc.Sequential([oc.Embedding(V, D, activation="tanh"), oc.Dense(D, K)], store=path, seed=0,
                       budget=8192) as model:
        for X, y in data * 3:
            model.train_step(X, y, loss, opt)
    with open_store(path) as store:
        report = compress.factorize(store, "embedding_0/W", rank=3, drop=True)
        assert "embedding_0/W" not in store and report.dropped == ("embedding_0/W",)
        U, Vm = store.read("embedding_0/U"), store.read("embedding_0/V")
    fact = oc.Sequential([oc.FactorizedEmbedding(V, D, 3, activation="tanh", name="embedding_0"), oc.Dense(D, K)],
                         store=path, seed=7, budget=8192)
    X0 = data[0][0]
    sd = fact.state_dict()
    np.testing.assert_allclose(fact.predict(X0), np.tanh(X0 @ U @ Vm) @ sd["dense_1/W"] + sd["dense_1/b"],
                               rtol=1e-4, atol=1e-5)
    first = np.mean([fact.evaluate(X, y, loss) for X, y in data])
    for X, y in data * 4:
        fact.train_step(X, y, loss, opt)
    assert np.mean([fact.evaluate(X, y, loss) for X, y in data]) < first
    fact.close()


# -- refused ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, 6, -1, 2.0, True, None])
def test_bad_ranks_are_refused(rank):
    with pytest.raises(ConfigError, match=r"rank of FactorizedDense must be an integer in \[1, 5\]"):
        oc.FactorizedDense(8, 5, rank)
    with pytest.raises(ConfigError, match=r"rank of FactorizedEmbedding must be an integer in \[1, 5\]"):
        oc.FactorizedEmbedding(100, 5, rank)


def test_bad_inits_and_positions_are_refused():
    with pytest.raises(ConfigError, match=r"pass \(U, V\)"):
        oc.FactorizedDense(4, 3, 2, init=np.ones((4, 3)))
    with pytest.raises(ShapeError, match=r"FactorizedDense V must have shape \(2, 3\)"):
        oc.FactorizedDense(4, 3, 2, init=(np.ones((4, 2)), np.ones((3, 2))))
    with pytest.raises(ConfigError, match="must be one of"):
        oc.FactorizedEmbedding(10, 3, 2, init=("uniform", "bogus"))
    with pytest.raises(ConfigError, match="must be the first layer"):
        oc.Sequential([oc.Dense(3, 10), oc.FactorizedEmbedding(10, 4, 2)])


def test_factorized_embedding_accepts_every_sparse_batch_form():
    model = oc.Sequential([oc.FactorizedEmbedding(10, 4, 2)], seed=0, dtype="float64")
    sd = model.state_dict()
    table = sd["factorized_embedding_0/U"] @ sd["factorized_embedding_0/V"]
    dense = np.zeros((3, 10))
    dense[0, 4] = dense[1, 2] = dense[2, 4] = 1
    for X in (np.array([4, 2, 4]), [[4], [2], [4]], sp.csr_matrix(dense)):
        np.testing.assert_allclose(model.predict(X), dense @ table, rtol=1e-12)
    assert "FactorizedEmbedding 10->2->4" in model.layers[0].describe()
