"""The engine's behaviour: learning, optimizers against their formulas, state dicts, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import oocnet as oc
from oocnet.errors import BudgetError, ConfigError, InputError, NumericalError, OocnetError, ShapeError


def small(seed=0, dtype="float64", **kw):
    return oc.Sequential([oc.Dense(3, 4, activation="tanh"), oc.Dense(4, 2)], seed=seed, dtype=dtype, **kw)


def test_xor_is_learned_by_a_2_8_1_tanh_network():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([[-1], [1], [1], [-1]], dtype=float)
    model = oc.Sequential([oc.Dense(2, 8, activation="tanh"), oc.Dense(8, 1, activation="tanh")],
                          seed=1, dtype="float64")
    opt, loss = oc.SGD(lr=0.1), oc.HalfSquaredError()
    first = model.evaluate(X, y, loss)
    for _ in range(2000):
        model.train_step(X, y, loss, opt)
    final = model.evaluate(X, y, loss)
    assert first > 1.0 and final < 0.01, (first, final)
    np.testing.assert_array_equal(np.sign(model.predict(X)), y)


def test_initialisation_depends_on_seed_only():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    for k in a.parameter_keys():
        np.testing.assert_array_equal(a.state_dict()[k], b.state_dict()[k])
    assert not np.array_equal(a.state_dict()["dense_0/W"], c.state_dict()["dense_0/W"])
    assert np.all(a.state_dict()["dense_0/b"] == 0)
    W = a.state_dict()["dense_0/W"]
    limit = np.sqrt(6 / (3 + 4))
    assert np.all(np.abs(W) <= limit) and W.std() > limit / 4


def test_train_step_matches_a_numpy_reference_over_steps():
    rng = np.random.default_rng(0)
    model = small()
    sd = model.state_dict()
    W0, b0, W1, b1 = (sd[k].copy() for k in ("dense_0/W", "dense_0/b", "dense_1/W", "dense_1/b"))
    lr = 0.05
    for step in range(5):
        X, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
        L = model.train_step(X, y, oc.HalfSquaredError(), oc.SGD(lr=lr))
        s1 = X @ W0 + b0
        z1 = np.tanh(s1)
        out = z1 @ W1 + b1
        assert L == pytest.approx(0.5 * np.sum((out - y) ** 2), rel=1e-12)
        d2 = out - y
        d1 = (d2 @ W1.T) * (1 - z1**2)  # with the pre-update W1
        W1 -= lr * z1.T @ d2
        b1 -= lr * d2.sum(0)
        W0 -= lr * X.T @ d1
        b0 -= lr * d1.sum(0)
    sd = model.state_dict()
    for k, ref in zip(("dense_0/W", "dense_0/b", "dense_1/W", "dense_1/b"), (W0, b0, W1, b1)):
        np.testing.assert_allclose(sd[k], ref, rtol=1e-12, atol=1e-14)


def _one_step(opt, steps=3):
    """Train a 1-layer linear model; return (initial W, grads seen, final W, final state)."""
    rng = np.random.default_rng(1)
    model = oc.Sequential([oc.Dense(3, 2, bias=False)], dtype="float64", seed=2)
    W = model.state_dict()["dense_0/W"]
    grads = []
    for _ in range(steps):
        X, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
        grads.append(model.gradients(X, y, oc.HalfSquaredError())["dense_0/W"])
        model.train_step(X, y, oc.HalfSquaredError(), opt)
    return W, grads, model.state_dict(include_state=True)


def test_sgd_momentum_against_formula():
    W, grads, sd = _one_step(oc.SGD(lr=0.1, momentum=0.9))
    v = np.zeros_like(W)
    for g in grads:
        v = 0.9 * v + g
        W = W - 0.1 * v
    np.testing.assert_allclose(sd["dense_0/W"], W, rtol=1e-12)
    np.testing.assert_allclose(sd["dense_0/W:momentum"], v, rtol=1e-12)


def test_adagrad_against_formula():
    W, grads, sd = _one_step(oc.Adagrad(lr=0.5, eps=1e-8, initial_accumulator=0.1))
    G = np.full_like(W, 0.1)
    for g in grads:
        G = G + g * g
        W = W - 0.5 * g / (np.sqrt(G) + 1e-8)
    np.testing.assert_allclose(sd["dense_0/W"], W, rtol=1e-12)
    np.testing.assert_allclose(sd["dense_0/W:adagrad"], G, rtol=1e-12)


def test_predict_and_evaluate_change_nothing():
    model = small()
    before = model.state_dict()
    X, y = np.ones((2, 3)), np.zeros((2, 2))
    model.predict(X)
    model.evaluate(X, y, oc.HalfSquaredError())
    model.gradients(X, y, oc.HalfSquaredError())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_batch_invariance_of_predict():
    rng = np.random.default_rng(2)
    model = small()
    X = rng.normal(size=(9, 3))
    whole = model.predict(X)
    parts = np.vstack([model.predict(X[i : i + 2]) for i in range(0, 9, 2)])
    np.testing.assert_allclose(whole, parts, rtol=1e-12)


def test_state_dict_round_trip_and_checks():
    a, b = small(seed=1), small(seed=2)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    sd = a.state_dict()
    sd["dense_0/W"] = sd["dense_0/W"][:2]
    before = b.state_dict()
    with pytest.raises(ShapeError, match=r"dense_0/W.*\(3, 4\)"):
        b.load_state_dict(sd)
    with pytest.raises(ConfigError, match="nope"):
        b.load_state_dict({**a.state_dict(), "nope/W": np.zeros(1)})
    with pytest.raises(ConfigError, match="missing"):
        b.load_state_dict({"dense_0/W": np.zeros((3, 4))})
    bad = a.state_dict()
    bad["dense_1/b"] = np.array([np.nan, 0.0])
    with pytest.raises(InputError, match="NaN"):
        b.load_state_dict(bad)
    f32 = small(seed=3, dtype="float32")
    before32 = f32.state_dict()
    huge = {k: v.astype(np.float64) for k, v in before32.items()}
    huge["dense_1/b"] = np.array([1e300, 0.0])  # finite in float64, inf once in the model's float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"dense_1/b'\] has values beyond the range of float32"):
            f32.load_state_dict(huge)
    assert all(np.array_equal(f32.state_dict()[k], v) for k, v in before32.items())
    for k, v in b.state_dict().items():  # nothing was written by the failed loads
        np.testing.assert_array_equal(v, before[k])
    b.load_state_dict({"dense_0/b": np.ones(4)}, strict=False)
    np.testing.assert_array_equal(b.state_dict()["dense_0/b"], np.ones(4))


def test_float32_model_computes_in_float32():
    model = small(dtype="float32")
    out = model.predict(np.ones((2, 3)))
    assert out.dtype == np.float32
    assert model.state_dict()["dense_0/W"].dtype == np.float32


def test_trace_records_every_layer():
    model = small()
    trace: dict = {}
    model.train_step(np.ones((2, 3)), np.zeros((2, 2)), "half_squared_error", oc.SGD(0.1), trace=trace)
    assert [a.shape for a in trace["s"]] == [(2, 4), (2, 2)]
    assert [a.shape for a in trace["delta"]] == [(2, 4), (2, 2)]


# -- bad input: a clear OocnetError, raised before anything changes ------------------------------

def _assert_unchanged(model, before):
    for k, v in model.state_dict(include_state=True).items():
        if k in before:
            np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize(
    "X, y, loss, match",
    [
        (np.ones((2, 5)), np.zeros((2, 2)), oc.HalfSquaredError(), r"shape \(rows, 3\).*\(2, 5\)"),
        (np.ones((2,)), np.zeros((2, 2)), oc.HalfSquaredError(), r"shape \(rows, 3\)"),
        (np.ones((2, 3)), np.zeros((3, 2)), oc.HalfSquaredError(), r"\(2, 2\).*\(3, 2\)"),
        (np.array([[1, np.nan, 0]]), np.zeros((1, 2)), oc.HalfSquaredError(), "NaN or inf"),
        (np.array([[1, np.inf, 0]]), np.zeros((1, 2)), oc.HalfSquaredError(), "NaN or inf"),
        (np.ones((1, 3)), np.array([[0.0, np.nan]]), oc.HalfSquaredError(), "NaN or inf"),
        (np.ones((2, 3)), np.array([0, 2]), oc.SoftmaxCrossEntropy(), r"\[0, 2\).*\[0, 2\]"),
        (np.ones((2, 3)), np.array([-1, 0]), oc.SoftmaxMarginHinge(), r"\[0, 2\)"),
        (np.ones((2, 3)), np.array([0, 1, 1]), oc.SoftmaxCrossEntropy(), r"2 integer labels"),
        (np.ones((2, 3)), np.array([0.5, 1.0]), oc.SoftmaxCrossEntropy(), "integer"),
        (np.ones((0, 3)), np.zeros((0, 2)), oc.HalfSquaredError(), "empty"),
        ([["a", "b", "c"]], np.zeros((1, 2)), oc.HalfSquaredError(), "numeric"),
    ],
)
def test_bad_batches_are_refused_before_any_update(X, y, loss, match):
    model = small()
    model.train_step(np.ones((2, 3)), np.zeros((2, 2)), oc.HalfSquaredError(), oc.SGD(0.1, momentum=0.5))
    before = model.state_dict(include_state=True)
    with pytest.raises(OocnetError, match=match):
        model.train_step(X, y, loss, oc.SGD(0.1, momentum=0.5))
    _assert_unchanged(model, before)
    assert model.step == 1


def test_widths_that_do_not_chain():
    with pytest.raises(ShapeError, match=r"dense_0 \(Dense 3->4\) outputs 4 but dense_1 \(Dense 5->2\) takes 5"):
        oc.Sequential([oc.Dense(3, 4), oc.Dense(5, 2)])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: oc.Dense(3, 4, activation="softplus"), r"identity, relu, sigmoid, tanh.*'softplus'"),
        (lambda: oc.Dense(0, 4), "n_in must be a positive integer, got 0"),
        (lambda: oc.Dense(3, 2.5), "n_out must be a positive integer"),
        (lambda: oc.Dense(3, 4, bias="yes"), "bias must be True or False"),
        (lambda: oc.Dense(3, 4, init="orthogonal"), "init of Dense W must be one of"),
        (lambda: oc.Dense(3, 4, init=np.zeros((4, 3))), r"shape \(3, 4\), got \(4, 3\)"),
        (lambda: oc.SGD(lr=-1), "lr must be a finite number > 0, got -1"),
        (lambda: oc.SGD(lr=0.1, momentum=1.0), r"momentum must be a number in \[0, 1\)"),
        (lambda: oc.Adagrad(lr=0.1, eps=0, initial_accumulator=0), "cannot both be 0"),
        (lambda: oc.SoftmaxMarginHinge(margin=-1), "margin must be a finite number >= 0"),
        (lambda: oc.SoftmaxMarginHinge(margin="1"), "margin must be a finite number >= 0, got '1'"),
        (lambda: oc.SoftmaxMarginHinge(margin=True), "margin must be a finite number >= 0, got True"),
        (lambda: oc.SoftmaxCrossEntropy(reduction="max"), "reduction must be one of sum, mean"),
        (lambda: oc.Sequential([]), "non-empty list"),
        (lambda: oc.Sequential([oc.Dense(2, 2)], dtype="int32"), "float32, float64"),
        (lambda: oc.Sequential([oc.Dense(2, 2)], seed=-1), "seed must be a non-negative integer"),
        (lambda: oc.Sequential([oc.Dense(2, 2)], budget="lots"), "budget must be a positive byte count"),
        (lambda: oc.Sequential([oc.Dense(2, 2, name="x"), oc.Dense(2, 2, name="x")]), "unique"),
        (lambda: oc.Activation("f", np.tanh, None), "callable"),
    ],
)
def test_bad_configuration_is_a_clear_error(make, match):
    with pytest.raises(OocnetError, match=match):
        make()


def test_unknown_loss_name_lists_the_known_ones():
    model = small()
    with pytest.raises(ConfigError, match="half_squared_error, softmax_cross_entropy, softmax_margin_hinge"):
        model.train_step(np.ones((1, 3)), np.zeros((1, 2)), "mse", oc.SGD(0.1))
    with pytest.raises(ConfigError, match="optimizer"):
        model.train_step(np.ones((1, 3)), np.zeros((1, 2)), "half_squared_error", "sgd")


def test_non_finite_loss_raises_before_the_update():
    model = small()
    before = model.state_dict()
    huge = np.full((1, 2), 1e300)
    with pytest.raises(NumericalError, match="Lower the learning rate"):
        model.train_step(np.ones((1, 3)), huge, oc.HalfSquaredError(), oc.SGD(0.1))
    _assert_unchanged(model, before)


def test_errors_are_also_builtin_exception_types():
    with pytest.raises(ValueError):
        oc.Dense(3, 4, activation="nope")
    with pytest.raises(BudgetError):
        oc.Sequential([oc.Dense(1000, 10)], budget=16)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "half_squared_error", "softmax_margin_hinge"])
def test_missing_targets_are_an_input_error_not_garbage_labels(loss):
    model = oc.Sequential([oc.Dense(3, 2)], dtype="float64")
    before = model.state_dict()
    for call in (lambda: model.train_step(np.ones((2, 3)), None, loss, oc.SGD(0.1)),
                 lambda: model.evaluate(np.ones((2, 3)), None, loss),
                 lambda: model.gradients(np.ones((2, 3)), None, loss)):
        with pytest.raises(InputError, match="needs targets"):
            call()
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("backend", ["ram", "memmap"])
def test_an_update_that_makes_parameters_non_finite_is_an_error_and_never_committed(backend, tmp_path):
    X, Y = np.random.default_rng(0).normal(size=(4, 3)), np.ones((4, 2))
    store = None if backend == "ram" else tmp_path / "p"
    model = oc.Sequential([oc.Dense(3, 2)], store=store, dtype="float32")
    model.train_step(X, Y, "half_squared_error", oc.SGD(0.01))
    if store is not None:
        model.commit()
    good = model.state_dict()
    with warnings.catch_warnings(), pytest.raises(NumericalError, match="NaN or inf"):
        warnings.simplefilter("error")  # as under pytest -W error: numpy's overflow warning is not what escapes
        model.train_step(X * 1e10, Y, "half_squared_error", oc.SGD(1e20))
    if store is not None:
        with pytest.raises(OocnetError, match="rolls back"):
            model.commit()
        model.close()
        again = oc.Sequential([oc.Dense(3, 2)], store=store, dtype="float32")
        assert all(np.array_equal(again.state_dict()[k], v) for k, v in good.items())
        again.close()
    nan_delta = oc.CustomLoss(lambda z, y: 1.0, lambda z, y: z * np.nan)  # a finite loss, a NaN gradient
    with pytest.raises(NumericalError):
        oc.Sequential([oc.Dense(3, 2)]).train_step(X, Y, nan_delta, oc.SGD(0.1))


def test_optimizer_hyperparameters_changed_after_construction_are_checked():
    X, Y = np.ones((2, 3)), np.ones((2, 2))
    model = oc.Sequential([oc.Dense(3, 2)], dtype="float64")
    before = model.state_dict()
    for opt, attr, bad in ((oc.SGD(0.1), "lr", -5), (oc.SGD(0.1, momentum=0.5), "momentum", 1.5),
                           (oc.Adam(0.1), "beta2", 1.0), (oc.Adagrad(0.1), "eps", float("nan"))):
        setattr(opt, attr, bad)
        with pytest.raises(ConfigError, match=attr):
            model.train_step(X, Y, "half_squared_error", opt)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    model.commit()  # nothing was half-applied


def test_loaded_optimizer_state_must_be_state_the_rule_could_have_written():
    X, Y = np.random.default_rng(0).normal(size=(4, 3)), np.ones((4, 2))
    for opt, key, bad, match in ((oc.Adagrad(0.1), "dense_0/W:adagrad", -np.ones((3, 2)), "negative"),
                                 (oc.Adam(0.1), "dense_0/W:adam_v", -np.ones((3, 2)), "negative"),
                                 (oc.Adam(0.1), "dense_0/W:adam_t", np.array([2.7, 1.0, 0.0]), "whole numbers"),
                                 (oc.Adam(0.1), "dense_0/W:adam_t", np.array([-1, 1, 0]), "whole numbers")):
        model = oc.Sequential([oc.Dense(3, 2)], dtype="float64")
        model.train_step(X, Y, "half_squared_error", opt)
        state = model.state_dict(include_state=True)
        before = {k: v.copy() for k, v in state.items()}
        state[key] = bad
        with pytest.raises(InputError, match=match):
            model.load_state_dict(state)
        assert all(np.array_equal(model.state_dict(include_state=True)[k], v) for k, v in before.items())
    fresh = oc.Sequential([oc.Dense(3, 2)], dtype="float64")
    with pytest.raises(ConfigError, match="created by the first train_step"):
        fresh.load_state_dict(before)


def test_custom_loss_value_must_be_one_number_and_float32_overflow_is_named():
    X, Y = np.ones((2, 3)), np.ones((2, 2))
    for value in (lambda z, y: (z - y) ** 2, lambda z, y: None):
        with pytest.raises(ConfigError, match="one real number"):
            oc.Sequential([oc.Dense(3, 2)]).train_step(X, Y, oc.CustomLoss(value, lambda z, y: z - y), oc.SGD(0.1))
    model = oc.Sequential([oc.Dense(3, 2)], dtype="float32")
    with pytest.raises(InputError, match="beyond the range of float32"):
        model.train_step(np.full((2, 3), 1e39), Y, "half_squared_error", oc.SGD(0.1))
    with pytest.raises(InputError, match="beyond the range of float32"):
        model.train_step(X, np.full((2, 2), 1e39), "half_squared_error", oc.SGD(0.1))


@pytest.mark.parametrize(
    "X, Y, loss, error, match",
    [
        ([[1, 2, 3], [1]], np.ones((2, 2)), "half_squared_error", ShapeError, "numpy could not make one array"),
        (np.array([["1", "2", "3"]]), np.ones((1, 2)), "half_squared_error", InputError, r"got text \(dtype <U1\)"),
        (np.full((1, 3), 1e300), np.ones((1, 2)), "half_squared_error", InputError, "beyond the range of float32"),
        (np.ones((1, 3)), np.full((1, 2), 1e300), "half_squared_error", InputError, "beyond the range of float32"),
        (np.ones((2, 3)), [[0, 1], [1]], "half_squared_error", InputError, "numpy could not make one array"),
        (np.ones((2, 3)), [["a", "b"], ["c", "d"]], "half_squared_error", InputError, "got text"),
        (np.ones((2, 3)), [[0], [1, 0]], "softmax_cross_entropy", InputError, "needs 2 integer labels; numpy could"),
        (np.ones((2, 3)), [[0, 1]], "softmax_cross_entropy", InputError,
         r"needs 2 integer labels \(shape \(2,\) or \(2, 1\)\), got shape \(1, 2\)"),
    ],
    ids=["ragged-x", "text-x", "overflow-x", "overflow-y", "ragged-y", "text-y", "ragged-labels", "row-of-labels"],
)
def test_batches_numpy_cannot_take_or_that_overflow_are_refused_with_one_clear_error(X, Y, loss, error, match):
    model = oc.Sequential([oc.Dense(3, 2)], dtype="float32", seed=0)
    before = model.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning ahead of the error
        with pytest.raises(error, match=match):
            model.train_step(X, Y, loss, oc.SGD(0.1))
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    # numbers given as objects (a list mixing ints and numpy scalars) are still numbers
    np.testing.assert_array_equal(model.predict([[1, np.float32(2), 3]]), model.predict(np.array([[1.0, 2.0, 3.0]])))


@pytest.mark.parametrize("make, name", [(lambda: oc.Embedding(1000.0, 4), "n_words"), (lambda: oc.Embedding(10, 0), "dim"),
                                        (lambda: oc.FactorizedEmbedding(10.5, 4, 2), "n_words"),
                                        (lambda: oc.Output(4, -1), "n_classes"), (lambda: oc.Output(True, 3), "dim")])
def test_layer_size_errors_name_the_argument_the_user_gave(make, name):
    with pytest.raises(ConfigError, match=f"^{name} must be a positive integer"):
        make()


_BAD_DERIVATIVES = {
    "shape": (lambda s: np.ones((s.shape[0], 2)), ConfigError, "must return shape"),
    "scalar": (lambda s: 1.0, ConfigError, "must return shape"),
    "none": (lambda s: None, ConfigError, "real numbers"),
    "text": (lambda s: np.full(s.shape, "x"), ConfigError, "real numbers"),
    "complex": (lambda s: np.ones(s.shape) * 1j, ConfigError, "real numbers"),
    "nan": (lambda s: np.full(s.shape, np.nan), NumericalError, "derivative returned NaN or inf"),
}


@pytest.mark.parametrize("bad", sorted(_BAD_DERIVATIVES))
@pytest.mark.parametrize("top", ["dense", "output"])
def test_a_bad_user_derivative_changes_no_parameter(bad, top, tmp_path):
    """Backward updates a layer before it needs the derivative beneath it: a user's derivative is checked first."""
    derivative, error, match = _BAD_DERIVATIVES[bad]
    act = oc.Activation("mine", np.tanh, derivative)
    last = oc.Dense(4, 3) if top == "dense" else oc.Output(4, 3)
    model = oc.Sequential([oc.Dense(3, 4, activation=act), last], dtype="float64", seed=0)
    X, y = np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 1, 2, 1, 0])
    before = model.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error, match=match):
            model.train_step(X, y, "softmax_cross_entropy", oc.SGD(0.1))
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    model.commit()  # nothing was half-applied


@pytest.mark.parametrize("delta, error, match", [
    (lambda z, y: np.full(z.shape, np.nan), NumericalError, "delta returned NaN or inf"),
    (lambda z, y: np.ones(z.shape) * 1j, ConfigError, "real numbers"),
    (lambda z, y: [[1, 2], [3]], ConfigError, "delta must be an array"),
])
def test_a_bad_custom_loss_delta_changes_no_parameter(delta, error, match):
    model = oc.Sequential([oc.Dense(3, 4, activation="tanh"), oc.Dense(4, 2)], dtype="float64", seed=0)
    before = model.state_dict()
    loss = oc.CustomLoss(lambda z, y: float(((z - y) ** 2).sum()), delta)
    with pytest.raises(error, match=match):
        model.train_step(np.ones((2, 3)), np.zeros((2, 2)), loss, oc.SGD(0.1))
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
