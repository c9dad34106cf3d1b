"""Gradient checks (float64, central differences, relative error < 1e-6) of every activation, loss and layer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oocnet as oc
from oocnet.activations import ACTIVATIONS
from oocnet.errors import ConfigError
from oocnet.losses import softmax
from oocnet.testing import gradcheck, gradcheck_model, numerical_gradient, relative_error

TOL = 1e-6


def _away_from_kinks(rng, shape, scale=1.0):
    """Values at least 1e-3 away from 0, where relu's derivative jumps."""
    s = rng.normal(scale=scale, size=shape)
    return np.where(np.abs(s) < 1e-3, 0.5, s)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_matches_central_differences(name):
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    s = _away_from_kinks(rng, (5, 4), scale=2.0)
    r = rng.normal(size=s.shape)  # a random linear functional makes every element count
    err = gradcheck(lambda v: float(np.sum(act.forward(v) * r)), s, act.derivative(s) * r)
    assert err < TOL
    # grad(s, z), the fast path from outputs, agrees with derivative(s)
    np.testing.assert_allclose(act.grad(s, act.forward(s)), act.derivative(s), rtol=1e-12, atol=1e-15)


def test_sigmoid_is_stable_for_large_inputs():
    act = ACTIVATIONS["sigmoid"]
    with np.errstate(over="raise"):
        z = act.forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(z, [0.0, 0.5, 1.0])


def test_custom_activation_is_used_as_given():
    calls = []
    act = oc.Activation("cube", lambda s: s**3, lambda s: calls.append(1) or 3 * s**2)
    s = np.array([[0.5, -2.0]])
    assert gradcheck(lambda v: float(np.sum(act.forward(v))), s, act.derivative(s)) < TOL
    assert calls


def _labels_and_logits(rng, n, k):
    return rng.integers(0, k, size=n), rng.normal(scale=2.0, size=(n, k))


def test_half_squared_error_gradient():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    loss = oc.HalfSquaredError()
    assert gradcheck(lambda v: loss.value(v, y), z, loss.delta(z, y)) < TOL
    assert loss.value(z, y) == pytest.approx(0.5 * np.sum((z - y) ** 2))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_softmax_cross_entropy_gradient(reduction):
    rng = np.random.default_rng(2)
    y, z = _labels_and_logits(rng, 7, 5)
    loss = oc.SoftmaxCrossEntropy(reduction=reduction)
    assert gradcheck(lambda v: loss.value(v, y), z, loss.delta(z, y)) < TOL
    ref = -np.sum(np.log(softmax(z)[np.arange(7), y]))
    assert loss.value(z, y) == pytest.approx(ref / (7 if reduction == "mean" else 1))


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.3, 1.0, 2.0])
def test_softmax_margin_hinge_gradient(margin):
    rng = np.random.default_rng(3)
    y, z = _labels_and_logits(rng, 8, 6)
    loss = oc.SoftmaxMarginHinge(margin=margin)
    p = softmax(z)
    x = p - p[np.arange(8), y][:, None] + margin
    x[np.arange(8), y] = -1
    assert np.all(np.abs(x[x != -1]) > 1e-4), "a term sits on the hinge's kink; pick another seed"
    assert gradcheck(lambda v: loss.value(v, y), z, loss.delta(z, y)) < TOL


def test_softmax_margin_hinge_has_active_and_inactive_terms_at_moderate_margin():
    rng = np.random.default_rng(3)
    y, z = _labels_and_logits(rng, 8, 6)
    p = softmax(z)
    x = p - p[np.arange(8), y][:, None] + 0.3
    x[np.arange(8), y] = 0
    assert np.any(x > 0) and np.any(x < 0)  # the margin-0.3 case above exercises both branches


def test_softmax_margin_hinge_value_against_direct_formula():
    rng = np.random.default_rng(4)
    y, z = _labels_and_logits(rng, 5, 4)
    m = 0.25
    p = softmax(z)
    ref = sum(max(0.0, p[i, j] - p[i, y[i]] + m) for i in range(5) for j in range(4) if j != y[i])
    assert oc.SoftmaxMarginHinge(margin=m).value(z, y) == pytest.approx(ref)


def test_softmax_margin_hinge_gradient_matches_explicit_jacobian():
    # N3: dJ/do = (dp/do)^T dJ/dp with the V x V softmax Jacobian, formed here only as a reference.
    rng = np.random.default_rng(5)
    y, z = _labels_and_logits(rng, 3, 5)
    loss = oc.SoftmaxMarginHinge(margin=0.4)
    got = loss.delta(z, y)
    for i in range(3):
        p = softmax(z[i : i + 1])[0]
        jac = np.diag(p) - np.outer(p, p)  # jac[a, k] = dp_a / do_k
        x = p - p[y[i]] + 0.4
        g = (x > 0).astype(float)
        g[y[i]] = -sum(g[j] for j in range(5) if j != y[i])
        np.testing.assert_allclose(got[i], jac.T @ g, rtol=1e-12, atol=1e-15)


def test_custom_loss_gradient_and_targets():
    loss = oc.CustomLoss(value=lambda z, y: float(np.sum(np.cosh(z - y))), delta=lambda z, y: np.sinh(z - y))
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    assert gradcheck(lambda v: loss.value(v, y), z, loss.delta(z, y)) < TOL


def _model(layers, seed=0):
    return oc.Sequential(layers, seed=seed, dtype="float64")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_dense_layer_gradients(bias, activation):
    rng = np.random.default_rng(7)
    model = _model([oc.Dense(4, 3, activation=activation, bias=bias)])
    X = rng.normal(size=(5, 4))
    y = rng.normal(size=(5, 3))
    errs = gradcheck_model(model, X, y, oc.HalfSquaredError())
    assert set(errs) == ({"dense_0/W", "dense_0/b"} if bias else {"dense_0/W"})
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("loss", [oc.HalfSquaredError(), oc.SoftmaxCrossEntropy(), oc.SoftmaxMarginHinge(0.3)])
def test_three_layer_network_end_to_end(loss):
    rng = np.random.default_rng(8)
    model = _model([
        oc.Dense(5, 7, activation="tanh"),
        oc.Dense(7, 6, activation="sigmoid"),
        oc.Dense(6, 4, activation="identity"),
    ])
    X = rng.normal(size=(6, 5))
    y = rng.integers(0, 4, size=6) if loss.targets == "labels" else rng.normal(size=(6, 4))
    errs = gradcheck_model(model, X, y, loss)
    assert len(errs) == 6 and max(errs.values()) < TOL, errs


def test_input_gradient_follows_n2_delta_rule():
    # dL/dx of the whole network (the delta the first layer would pass down) against central differences.
    rng = np.random.default_rng(9)
    model = _model([oc.Dense(3, 4, activation="tanh"), oc.Dense(4, 2)])
    X, y = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    loss = oc.HalfSquaredError()
    sd = model.state_dict()
    W0, b0, W1, b1 = sd["dense_0/W"], sd["dense_0/b"], sd["dense_1/W"], sd["dense_1/b"]
    z1 = np.tanh(X @ W0 + b0)
    delta_out = (z1 @ W1 + b1) - y
    delta_1 = (delta_out @ W1.T) * (1 - z1**2)  # N2 step 4
    dx = delta_1 @ W0.T
    num = numerical_gradient(lambda v: model.evaluate(v, y, loss), X.copy())
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-9)
    # and N2 step 5 / N1.4: dL/dW_k = z_{k-1}^T delta_k
    g = model.gradients(X, y, loss)
    np.testing.assert_allclose(g["dense_1/W"], z1.T @ delta_out, rtol=1e-12)
    np.testing.assert_allclose(g["dense_0/W"], X.T @ delta_1, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    act=st.sampled_from(["tanh", "sigmoid", "identity"]),
)
def test_random_shapes_gradcheck(widths, rows, seed, act):
    rng = np.random.default_rng(seed)
    layers = [oc.Dense(a, b, activation=act) for a, b in zip(widths, widths[1:])]
    model = _model(layers, seed=seed)
    X = rng.normal(size=(rows, widths[0]))
    y = rng.normal(size=(rows, widths[-1]))
    loss = oc.HalfSquaredError()
    analytic = model.gradients(X, y, loss)
    params = model.state_dict()
    scale = max(1.0, model.evaluate(X, y, loss))
    for key, value in params.items():
        def f(v, key=key):
            model.load_state_dict({**params, key: v})
            return model.evaluate(X, y, loss)

        num = numerical_gradient(f, value.copy())
        model.load_state_dict(params)
        # Central differences resolve a gradient only down to about eps_machine * |L| / eps;
        # through saturated sigmoids a gradient can vanish below that, so tiny gradients are
        # checked absolutely and the rest relatively.
        if np.linalg.norm(analytic[key]) > 1e-4 * scale:
            assert relative_error(analytic[key], num) < TOL, key
        else:
            np.testing.assert_allclose(analytic[key], num, atol=1e-9 * scale, rtol=0, err_msg=key)


def test_numerical_gradient_works_for_any_memory_layout_and_checks_its_arguments():
    A = np.random.default_rng(0).standard_normal((3, 4))
    f = lambda x: float((x**3).sum())  # noqa: E731
    for x in (A.T, A.T.copy(order="F"), A[:, ::2]):
        before = x.copy()
        np.testing.assert_allclose(numerical_gradient(f, x), 3 * x**2, rtol=1e-7, atol=1e-8)
        np.testing.assert_array_equal(x, before)  # restored
        assert gradcheck(f, x, 3 * x**2) < 1e-8
    with pytest.raises(ConfigError, match="one real number"):
        gradcheck(lambda x: x**2, A, 2 * A)
    for eps in (0, -1e-6, float("nan")):
        with pytest.raises(ConfigError, match="eps"):
            numerical_gradient(f, A, eps)
