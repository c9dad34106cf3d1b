"""Large-vocabulary outputs: exact losses streamed over row tiles, sampled softmax, negative sampling."""

from __future__ import annotations

import numpy as np
import pytest

import oocnet as oc
from oocnet.errors import BudgetError, ConfigError
from oocnet.losses import softmax
from oocnet.sampling import UnigramSampler, negative_sampling, sampled_softmax
from oocnet.testing import gradcheck, gradcheck_model, relative_error

from test_outofcore import make_store

D, V = 6, 90


def build(store=None, budget=None, seed=0, bias=True):
    return oc.Sequential([oc.Dense(5, D, activation="tanh"), oc.Output(D, V, bias=bias)], store=store,
                         budget=budget, seed=seed, dtype="float64")


def batches(n=8, rows=7, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(rows, 5)), rng.integers(0, V, size=rows)) for _ in range(n)]


def reference_loss(model, X, y, loss):
    """The loss from whole logits, computed with numpy from the parameters."""
    sd = model.state_dict()
    z = np.tanh(X @ sd["dense_0/W"] + sd["dense_0/b"])
    logits = z @ sd["output_1/W"].T + sd.get("output_1/b", 0)
    return loss.value(logits, y)


@pytest.mark.parametrize("loss", [oc.SoftmaxCrossEntropy(), oc.SoftmaxMarginHinge(0.02),
                                  oc.SoftmaxCrossEntropy(reduction="mean")], ids=["ce", "hinge", "ce-mean"])
def test_streamed_value_equals_whole_logits(loss):
    model = build()
    for X, y in batches(3):
        assert model.evaluate(X, y, loss) == pytest.approx(reference_loss(model, X, y, loss), rel=1e-12)


@pytest.mark.parametrize("loss", [oc.SoftmaxCrossEntropy(), oc.SoftmaxMarginHinge(0.02)], ids=["ce", "hinge"])
@pytest.mark.parametrize("bias", [True, False])
def test_streamed_gradients_by_central_differences(loss, bias):
    model = build(bias=bias)
    X, y = batches(1)[0]
    errs = gradcheck_model(model, X, y, loss)
    assert max(errs.values()) < 1e-6, errs


@pytest.mark.parametrize("backend", ["copying", "memmap", "hdf5"])
@pytest.mark.parametrize("loss", [oc.SoftmaxCrossEntropy(), oc.SoftmaxMarginHinge(0.02)], ids=["ce", "hinge"])
@pytest.mark.parametrize("factor", [1, 3, 40])
def test_streamed_training_equals_unsharded_for_any_tile_size(backend, loss, factor, tmp_path):
    ram = build()
    probe = build()
    budget = factor * probe._min_budget(probe._state_infos(oc.Adagrad(0.1)))
    disk = build(make_store(backend, tmp_path), budget=budget)
    tiles = disk._tiles(oc.Adagrad(0.1))["output_1/W"]
    if factor < 40:
        assert len(tiles) > 1  # the output weight is processed in several tiles
    for X, y in batches():
        a = ram.train_step(X, y, loss, oc.Adagrad(0.1))
        b = disk.train_step(X, y, loss, oc.Adagrad(0.1))
        assert b == pytest.approx(a, rel=1e-10)
    want, got = ram.state_dict(include_state=True), disk.state_dict(include_state=True)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)
    disk.close()


def test_streamed_training_equals_a_dense_layer_on_whole_logits():
    """Output(d, V) trains exactly like Dense(d, V) with W transposed (the notes' engine)."""
    out = build()
    dense = oc.Sequential([oc.Dense(5, D, activation="tanh"), oc.Dense(D, V)], dtype="float64")
    sd = out.state_dict()
    dense.load_state_dict({"dense_0/W": sd["dense_0/W"], "dense_0/b": sd["dense_0/b"],
                           "dense_1/W": sd["output_1/W"].T.copy(), "dense_1/b": sd["output_1/b"]})
    for X, y in batches():
        assert out.train_step(X, y, oc.SoftmaxCrossEntropy(), oc.SGD(0.2)) == pytest.approx(
            dense.train_step(X, y, oc.SoftmaxCrossEntropy(), oc.SGD(0.2)), rel=1e-10)
    np.testing.assert_allclose(out.state_dict()["output_1/W"], dense.state_dict()["dense_1/W"].T, rtol=1e-10)


def test_other_losses_see_the_whole_logits():
    model = build()
    X = np.ones((2, 5))
    target = np.zeros((2, V))
    assert model.evaluate(X, target, oc.HalfSquaredError()) == pytest.approx(
        0.5 * np.sum(model.predict(X) ** 2), rel=1e-12)
    model.train_step(X, target, oc.HalfSquaredError(), oc.SGD(0.01))


# -- sampled losses ----------------------------------------------------------------------------

def test_sampled_softmax_kernel_gradients():
    rng = np.random.default_rng(0)
    B, n, d = 4, 6, 3
    z, Wt, bt = rng.normal(size=(B, d)), rng.normal(size=(B, d)), rng.normal(size=B)
    Ws, bs = rng.normal(size=(n, d)), rng.normal(size=n)
    lq_t, lq_s = rng.normal(size=B), rng.normal(size=n)
    hits = np.zeros((B, n), bool)
    hits[1, 2] = True
    val, dz, dWt, dbt, dWs, dbs = sampled_softmax(z, Wt, bt, Ws, bs, lq_t, lq_s, hits)
    f = lambda **kw: sampled_softmax(**{**dict(z=z, W_true=Wt, b_true=bt, W_s=Ws, b_s=bs, logq_true=lq_t,  # noqa
                                             logq_s=lq_s, hits=hits), **kw})[0]
    assert gradcheck(lambda v: f(z=v), z, dz) < 1e-7
    assert gradcheck(lambda v: f(W_true=v), Wt, dWt) < 1e-7
    assert gradcheck(lambda v: f(b_true=v), bt, dbt) < 1e-7
    assert gradcheck(lambda v: f(W_s=v), Ws, dWs) < 1e-7
    assert gradcheck(lambda v: f(b_s=v), bs, dbs) < 1e-7


def test_negative_sampling_kernel_gradients():
    rng = np.random.default_rng(1)
    B, k, d = 3, 4, 5
    args = dict(z=rng.normal(size=(B, d)), W_pos=rng.normal(size=(B, d)), b_pos=rng.normal(size=B),
                W_neg=rng.normal(size=(B, k, d)), b_neg=rng.normal(size=(B, k)))
    val, dz, dWp, dbp, dWn, dbn = negative_sampling(**args)
    for name, g in [("z", dz), ("W_pos", dWp), ("b_pos", dbp), ("W_neg", dWn), ("b_neg", dbn)]:
        assert gradcheck(lambda v, name=name: negative_sampling(**{**args, name: v})[0], args[name], g) < 1e-7
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    o_p = np.einsum("ij,ij->i", args["z"], args["W_pos"]) + args["b_pos"]
    o_n = np.einsum("ikj,ij->ik", args["W_neg"], args["z"]) + args["b_neg"]
    assert val == pytest.approx(-np.sum(np.log(sig(o_p))) - np.sum(np.log(sig(-o_n))))


def test_sampled_softmax_gradient_approaches_the_exact_one():
    """The estimator is biased for few samples; its error must shrink with the sample count."""
    rng = np.random.default_rng(2)
    n_cls, d, B = 300, 8, 16
    counts = rng.permutation(1.0 / np.arange(1, n_cls + 1))  # Zipfian frequencies
    W, b = rng.normal(size=(n_cls, d)) * 0.5, np.zeros(n_cls)
    z = rng.normal(size=(B, d))
    y = rng.integers(0, n_cls, size=B)
    p = softmax(z @ W.T + b)
    p[np.arange(B), y] -= 1
    exact = p @ W  # dL/dz of the full softmax
    errors = []
    for n in (10, 100, 1000, 20000):
        sampler = UnigramSampler(counts, power=0.75, seed=3)
        est = []
        for _ in range(5):
            s = sampler.sample(n)
            lq = np.log(n * sampler.probability(s))
            _, dz, *_ = sampled_softmax(z, W[y], b[y], W[s], b[s], np.zeros(B), lq, s[None, :] == y[:, None])
            est.append(dz)
        errors.append(relative_error(np.mean(est, axis=0), exact))
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[-1] < 0.03, errors


def test_sampler_frequencies_follow_unigram_to_the_075():
    counts = np.array([1000, 300, 100, 10, 1, 0, 50], float)
    sampler = UnigramSampler(counts, power=0.75, seed=0)
    draws = sampler.sample(400_000)
    freq = np.bincount(draws, minlength=counts.size) / draws.size
    want = counts**0.75 / np.sum(counts**0.75)
    np.testing.assert_allclose(freq, want, atol=3e-3)
    assert freq[5] == 0  # never seen, never drawn
    np.testing.assert_allclose(sampler.probability(np.arange(7)), want, rtol=1e-12)


@pytest.mark.parametrize("make_loss", [
    lambda s: oc.SampledSoftmax(n_samples=20, sampler=s),
    lambda s: oc.NegativeSampling(k=3, sampler=s),
], ids=["sampled_softmax", "negative_sampling"])
def test_sampled_training_touches_only_true_and_sampled_rows(make_loss, tmp_path):
    rng = np.random.default_rng(4)
    sampler = UnigramSampler(np.arange(1, V + 1, dtype=float)[::-1], seed=5)
    model = build(make_store("memmap", tmp_path), budget="1MiB")
    before = model.state_dict()["output_1/W"]
    X, y = rng.normal(size=(4, 5)), rng.integers(0, V, size=4)
    loss = make_loss(sampler)
    rng_state = sampler._rng.bit_generator.state
    value = model.train_step(X, y, loss, oc.SGD(0.5))
    sampler._rng.bit_generator.state = rng_state  # the same draws again
    drawn = sampler.sample(20 if isinstance(loss, oc.SampledSoftmax) else 4 * 3)
    after = model.state_dict()["output_1/W"]
    changed = set(np.flatnonzero(np.any(after != before, axis=1)).tolist())
    assert changed and changed <= set(y.tolist()) | set(drawn.tolist())
    assert np.isfinite(value)
    # evaluation stays exact
    assert model.evaluate(X, y, loss) == pytest.approx(
        reference_loss(model, X, y, oc.SoftmaxCrossEntropy()), rel=1e-12)
    model.close()


def test_sampled_training_learns():
    model = oc.Sequential([oc.Embedding(50, 8), oc.Output(8, 50)], seed=0, dtype="float64")
    sampler = UnigramSampler(np.ones(50), power=0.75, seed=1)
    X = [[i] for i in range(50)]
    y = (np.arange(50) * 7) % 50  # a fixed permutation to learn
    ce = oc.SoftmaxCrossEntropy()
    first = model.evaluate(X, y, ce)
    for _ in range(300):
        model.train_step(X, y, oc.NegativeSampling(k=5, sampler=sampler), oc.Adagrad(0.5))
    assert model.evaluate(X, y, ce) < 0.5 * first
    assert np.mean(np.argmax(model.predict(X), axis=1) == y) > 0.9


def test_bad_output_configurations():
    sampler = UnigramSampler(np.ones(V + 1))
    model = build()
    with pytest.raises(ConfigError, match=f"draws from {V + 1} classes"):
        model.train_step(np.ones((2, 5)), [0, 1], oc.SampledSoftmax(5, sampler), oc.SGD(0.1))
    dense_top = oc.Sequential([oc.Dense(5, V)], dtype="float64")
    with pytest.raises(ConfigError, match="needs an oc.Output layer"):
        dense_top.train_step(np.ones((2, 5)), [0, 1], oc.SampledSoftmax(5, UnigramSampler(np.ones(V))), oc.SGD(0.1))
    with pytest.raises(ConfigError, match="must be the last layer"):
        oc.Sequential([oc.Output(5, 4), oc.Dense(4, 2)])
    for bad, match in [(lambda: UnigramSampler([]), "1-D"), (lambda: UnigramSampler([0, 0]), "not all zero"),
                       (lambda: UnigramSampler([1, -1]), "non-negative"),
                       (lambda: oc.SampledSoftmax(0, sampler), "n_samples"),
                       (lambda: oc.NegativeSampling(2, "uniform"), "UnigramSampler")]:
        with pytest.raises(ConfigError, match=match):
            bad()


@pytest.mark.parametrize("kwargs", [dict(power="a"), dict(power=None), dict(seed=-1), dict(seed=1.5)])
def test_unigram_sampler_arguments_are_checked(kwargs):
    with pytest.raises(ConfigError):
        UnigramSampler(np.ones(5), **kwargs)
    with pytest.raises(ConfigError, match="numbers"):
        UnigramSampler(["a", "b"])


def test_unigram_sampler_handles_counts_near_the_float_limit():
    s = UnigramSampler([1e308, 1e308, 3e307], power=1.0)
    np.testing.assert_allclose(s.probability(np.arange(3)), np.array([10, 10, 3]) / 23, rtol=1e-12)


def test_a_sampled_step_refused_for_budget_changes_nothing_and_keeps_the_model_committable(tmp_path):
    model = oc.Sequential([oc.Embedding(64, 1), oc.Output(1, 64)], store=tmp_path / "p", budget=232, dtype="float64")
    sampler = UnigramSampler(np.ones(64), seed=1)
    model.train_step([[1]], [3], oc.SoftmaxCrossEntropy(), oc.SGD(0.1))
    before = model.state_dict()
    with pytest.raises(BudgetError):
        model.train_step([[1]], [3], oc.SampledSoftmax(20, sampler), oc.SGD(0.1))
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    # nor did it use up the sampler's draws: a retry (with a larger budget) draws what a fresh run draws
    np.testing.assert_array_equal(sampler.sample(20), UnigramSampler(np.ones(64), seed=1).sample(20))
    model.commit()  # the refused step left nothing half-applied
    assert model.last_commit["step"] == 1
    model.close()


def test_evaluate_returns_a_non_finite_loss_as_a_dense_last_layer_does():
    """Output's evaluate raised NumericalError ("before this step's update") where Dense returned nan."""
    big = 1e30
    for last in (oc.Output(2, 3), oc.Dense(2, 3)):
        model = oc.Sequential([oc.Dense(2, 2), last], dtype="float32", seed=0)
        state = {k: np.full(v.shape, big, np.float32) for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        value = model.evaluate(np.ones((2, 2), np.float32), [0, 1], oc.SoftmaxCrossEntropy())
        assert not np.isfinite(value), type(last).__name__
        with pytest.raises(oc.errors.NumericalError):  # training on it is still refused
            model.train_step(np.ones((2, 2), np.float32), [0, 1], oc.SoftmaxCrossEntropy(), oc.SGD(0.1))


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
@pytest.mark.parametrize("budget", ["32MiB", "48MiB"])
def test_row_caches_of_a_large_output_fit_their_share_of_the_budget(tmp_path, opt_name, budget):
    """The caches' bookkeeping is counted exactly (a 10^7-row bias's cache outgrew its share: BudgetError)."""
    V = 3_000_000
    model = oc.Sequential([oc.Dense(8, 4, activation="tanh"), oc.Output(4, V)], store=tmp_path / "p",
                          budget=budget, seed=0)
    opt = oc.SGD(0.1) if opt_name == "sgd" else oc.Adagrad(0.1)
    sampler = oc.UnigramSampler(np.ones(V), seed=1)
    model.train_step(np.ones((4, 8), np.float32), np.array([1, 2, 3, V - 1]), oc.NegativeSampling(5, sampler), opt)
    _, share = model._budget_split(opt)
    caches = model.pager._row_caches
    assert caches and sum(c.nbytes for c in caches.values()) <= share
    # ... and as many rows as fit: one more row per parameter would not.
    per_key = share // 2
    for key in ("output_1/W", "output_1/b"):
        group = [c for k, c in caches.items() if k == key or k.startswith(key + ":")]
        total = sum(c.nbytes for c in group)
        bigger = sum(type(c).nbytes_for(c.capacity + 1, c.data[0].nbytes) for c in group)
        assert total <= per_key < bigger
    model.close()
