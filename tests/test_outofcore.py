"""Training out of core gives the numbers training in RAM gives, for any backend and budget."""

from __future__ import annotations

import numpy as np
import pytest

import oocnet as oc
from oocnet.errors import BudgetError, ShapeError
from oocnet.store import open_store

from test_paging import CopyingStore

BACKENDS = ["copying", "memmap", "hdf5"]


def make_store(backend, tmp_path, name="params"):
    if backend == "copying":
        return CopyingStore()
    if backend == "memmap":
        return open_store(tmp_path / name, shard_bytes=1024)  # several shards per parameter
    return open_store(tmp_path / f"{name}.h5", chunk_bytes=512)


ARCHS = {
    "2-layer": lambda: [oc.Dense(6, 5, activation="tanh"), oc.Dense(5, 3)],
    "3-layer": lambda: [oc.Dense(8, 16, activation="relu"), oc.Dense(16, 16, activation="sigmoid"),
                        oc.Dense(16, 4, bias=False)],
}
OPTS = {
    "sgd": lambda: oc.SGD(lr=0.05),
    "momentum": lambda: oc.SGD(lr=0.02, momentum=0.9),
    "adagrad": lambda: oc.Adagrad(lr=0.05),
}


def batches(arch, n=12, seed=0):
    rng = np.random.default_rng(seed)
    n_in = ARCHS[arch]()[0].n_in
    n_out = ARCHS[arch]()[-1].n_out
    for _ in range(n):
        yield rng.normal(size=(7, n_in)), rng.integers(0, n_out, size=7)


def train(model, arch, opt, n=12):
    losses = [model.train_step(X, y, oc.SoftmaxCrossEntropy(), opt) for X, y in batches(arch, n)]
    return losses, model.state_dict(include_state=True)


def reference(arch, opt_name, dtype="float64"):
    model = oc.Sequential(ARCHS[arch](), seed=5, dtype=dtype)
    return train(model, arch, OPTS[opt_name]())


def min_budget(arch, opt_name, dtype="float64"):
    model = oc.Sequential(ARCHS[arch](), seed=5, dtype=dtype)
    opt = OPTS[opt_name]()
    return model._min_budget(model._state_infos(opt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_unsplit_paging_is_bitwise_equal_to_ram(backend, arch, opt_name, tmp_path):
    ref_losses, ref = reference(arch, opt_name)
    store = make_store(backend, tmp_path)
    model = oc.Sequential(ARCHS[arch](), store=store, budget="1MiB", seed=5, dtype="float64")
    losses, got = train(model, arch, OPTS[opt_name]())
    assert all(len(t) == 1 for t in model._tiles(OPTS[opt_name]()).values())  # nothing split
    assert losses == ref_losses
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert model.pager.stats.peak_resident_bytes <= 2**20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("opt_name", sorted(OPTS))
@pytest.mark.parametrize("factor", [1, 2, 3, 7])
def test_streamed_layers_match_ram(backend, arch, opt_name, factor, tmp_path):
    """Budgets from the smallest that works upward: layers are processed in row tiles."""
    ref_losses, ref = reference(arch, opt_name)
    budget = factor * min_budget(arch, opt_name)
    model = oc.Sequential(ARCHS[arch](), store=make_store(backend, tmp_path), budget=budget, seed=5,
                          dtype="float64")
    losses, got = train(model, arch, OPTS[opt_name]())
    assert max(len(t) for t in model._tiles(OPTS[opt_name]()).values()) > 1  # something is split
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert model.pager.stats.peak_resident_bytes <= budget


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_paged_matches_ram(backend, tmp_path):
    ref_losses, ref = reference("3-layer", "momentum", dtype="float32")
    budget = 2 * min_budget("3-layer", "momentum", dtype="float32")
    model = oc.Sequential(ARCHS["3-layer"](), store=make_store(backend, tmp_path), budget=budget, seed=5,
                          dtype="float32")
    losses, got = train(model, "3-layer", OPTS["momentum"]())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_budget_too_small_for_one_row_is_refused_at_construction(tmp_path):
    layers = [oc.Dense(10, 1000), oc.Dense(1000, 2)]
    with pytest.raises(BudgetError, match=r"gradient and optimizer state needs 7\.8 KiB; use budget >= 8000 bytes"):
        oc.Sequential(layers, store=tmp_path / "p", budget=3000)
    assert not (tmp_path / "p").exists()  # refused before any file was made


def test_budget_too_small_for_the_optimizer_state_is_refused_before_the_step():
    model = oc.Sequential([oc.Dense(10, 1000)], store=CopyingStore(), budget=9000, dtype="float32")
    before = model.state_dict()
    with pytest.raises(BudgetError, match="use budget >= 12000 bytes"):
        model.train_step(np.ones((2, 10)), np.zeros((2, 1000)), oc.HalfSquaredError(), oc.Adagrad(0.1))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_reopen_and_continue_equals_an_uninterrupted_run(backend, tmp_path):
    arch, opt_name = "3-layer", "momentum"
    ref_losses, ref = reference(arch, opt_name)
    path = tmp_path / ("p.h5" if backend == "hdf5" else "p")
    data = list(batches(arch))
    opt = OPTS[opt_name]()
    with oc.Sequential(ARCHS[arch](), store=path, budget=4096, seed=5, dtype="float64") as model:
        losses = [model.train_step(X, y, oc.SoftmaxCrossEntropy(), opt) for X, y in data[:5]]
    # A different seed proves the parameters come from the store, not the initialiser.
    with oc.Sequential(ARCHS[arch](), store=path, budget=4096, seed=99, dtype="float64") as model:
        losses += [model.train_step(X, y, oc.SoftmaxCrossEntropy(), opt) for X, y in data[5:]]
        got = model.state_dict(include_state=True)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("backend", ["memmap", "hdf5"])
def test_reopen_with_a_different_model_names_the_parameter(backend, tmp_path):
    path = tmp_path / ("p.h5" if backend == "hdf5" else "p")
    oc.Sequential([oc.Dense(4, 3), oc.Dense(3, 2)], store=path).close()
    with pytest.raises(ShapeError, match=r"'dense_1/W'.*\(3, 2\) float32.*expects \(3, 5\) float32"):
        oc.Sequential([oc.Dense(4, 3), oc.Dense(3, 5)], store=path)
    with pytest.raises(ShapeError, match=r"'dense_0/W'.*float32.*float64"):
        oc.Sequential([oc.Dense(4, 3), oc.Dense(3, 2)], store=path, dtype="float64")
    with open_store(path) as store:  # the failed opens changed nothing
        assert store.keys() == ["dense_0/W", "dense_0/b", "dense_1/W", "dense_1/b"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_values_do_not_depend_on_the_backend(backend, tmp_path):
    ram = oc.Sequential(ARCHS["3-layer"](), seed=3).state_dict()
    disk = oc.Sequential(ARCHS["3-layer"](), store=make_store(backend, tmp_path), seed=3).state_dict()
    for k in ram:
        np.testing.assert_array_equal(disk[k], ram[k])


def test_io_counters_are_exposed(tmp_path):
    model = oc.Sequential(ARCHS["3-layer"](), store=make_store("memmap", tmp_path), budget=2048, seed=0,
                          dtype="float64")
    train(model, "3-layer", oc.SGD(0.01), n=3)
    stats = model.io_stats
    assert stats["bytes_read"] > 0 and stats["bytes_written"] > 0
    assert stats["misses"] + stats["hits"] > 0
    assert stats["peak_resident_bytes"] <= 2048
