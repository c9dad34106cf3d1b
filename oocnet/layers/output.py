"""Output: a large-vocabulary output layer, stored V x d (one row per class), with fused losses.

``logits = x @ W.T + b``.  Because every class owns a row, every output update
is a row update: the exact losses stream over row tiles of W, the sampled ones
touch only the rows of the classes they use.

Exact, streamed (softmax cross-entropy and N3's softmax-margin hinge)
---------------------------------------------------------------------
The batch's logits are never whole: W is read in row tiles (sized by the
budget) and each tile's logits in chunks of at most ~8 MiB.

* pass 1 keeps, per example, a running max and sum of exponentials (the
  log-sum-exp) and picks up the true class's logit;
* the hinge needs a second statistics pass: with p_y known, the number of
  active terms and the sum of their probabilities (its gradient through the
  softmax Jacobian needs <g, p> over all V before any tile's gradient exists);
* the last pass recomputes each chunk's logits, forms dL/dlogits, adds its
  share of dL/dx with the tile as it was, then updates the tile.

Results equal the unsharded computation up to summation order.

Sampled (training only): :class:`~oocnet.SampledSoftmax` and
:class:`~oocnet.NegativeSampling` gather the true and sampled classes' rows
through the pager's row cache, apply the kernels of :mod:`oocnet.sampling`, and
scatter the updated rows back.  ``evaluate`` and ``predict`` are always exact.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, NumericalError
from ..init import check_init
from ..losses import Loss, SoftmaxCrossEntropy, SoftmaxMarginHinge
from ..sampling import negative_sampling, sampled_softmax, segment_sum
from .base import Layer, ParamSpec, _check_width

#: Logits are formed in chunks of at most about this many bytes.
LOGIT_BYTES = 8 * 2**20


def _check_loss_value(value: float, train: bool) -> None:
    """Refuse a non-finite loss before the gradient pass: nothing has been updated yet.  An evaluation
    returns it, as a dense last layer's does."""
    if train and not np.isfinite(value):
        raise NumericalError(
            f"the loss is {value} before this step's update; parameters were not changed. "
            f"Lower the learning rate or check the inputs' scale."
        )


class Output(Layer):
    """A V-way output layer with its weight stored V x d, for exact-streamed or sampled losses.

    Parameters
    ----------
    dim : int
        Input width d.
    n_classes : int
        V, the number of classes (rows of W).
    bias : bool
        A bias per class, b of shape (V,).
    init : str, callable or ndarray
        Initialiser of W (default ``"uniform"``, variance 1/d).
    name : str, optional
        Stable name used in store keys (default ``"output_<position>"``).

    Notes
    -----
    Use it as the model's last layer.  With :class:`~oocnet.SoftmaxCrossEntropy`
    or :class:`~oocnet.SoftmaxMarginHinge` the loss is computed streamed over
    row tiles of W (exact); with :class:`~oocnet.SampledSoftmax` or
    :class:`~oocnet.NegativeSampling` only sampled rows are touched.  Other losses
    see the full logits (as a Dense layer would produce them).
    """

    kind = "output"
    fuses_loss = True

    def __init__(self, dim: int, n_classes: int, bias: bool = True, init="uniform", name: str | None = None) -> None:
        super().__init__(_check_width("dim", dim), _check_width("n_classes", n_classes), "identity", name)
        if not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"bias must be True or False, got {bias!r}.")
        self.bias = bool(bias)
        self.init = check_init(init, (self.n_out, self.n_in), "Output W")

    def params(self):
        specs = [ParamSpec("W", (self.n_out, self.n_in), self.init, sparse=True)]
        if self.bias:
            specs.append(ParamSpec("b", (self.n_out,), None, sparse=True))
        return specs

    # -- plain forward/backward (full logits) ----------------------------------------------
    def _tiles(self, access):
        return access.tiles("W")

    def forward(self, access, x):
        out = np.empty((x.shape[0], self.n_out), dtype=x.dtype)
        for a, b in self._tiles(access):
            with access.read("W", a, b) as w:
                np.matmul(x, w.T, out=out[:, a:b])
            if self.bias:
                with access.read("b", a, b) as bv:
                    out[:, a:b] += bv
        return out

    def backward(self, access, x, delta, need_dx):
        dx = np.zeros((x.shape[0], self.n_in), dtype=x.dtype) if need_dx else None
        for a, b in reversed(self._tiles(access)):
            self._update_tile(access, x, a, b, lambda c0, c1, o: delta[:, c0:c1], dx, logits=False)
        return dx

    def _update_tile(self, access, x, a, b, grad_logits, dx, logits: bool = True) -> None:
        """For rows [a, b): g = grad_logits(c0, c1, logits of the chunk), dx += g @ W with the tile as it
        was, then the update of W[a:b] (and b[a:b]) from g."""
        bv = None
        if self.bias and logits:
            with access.read("b", a, b) as cur:
                bv = cur.copy()  # the values before this step's update
        gb = np.zeros(b - a, dtype=x.dtype) if self.bias else None
        with access.update("W", a, b) as (w, gw, apply_w):
            for c0, c1 in self._chunks(a, b, x.shape[0], x.dtype):
                o = None
                if logits:
                    o = x @ w[c0 - a : c1 - a].T
                    if bv is not None:
                        o += bv[c0 - a : c1 - a]
                g = np.asarray(grad_logits(c0, c1, o), dtype=x.dtype)
                if dx is not None:
                    dx += g @ w[c0 - a : c1 - a]
                np.matmul(g.T, x, out=gw[c0 - a : c1 - a])
                if gb is not None:
                    gb[c0 - a : c1 - a] = g.sum(axis=0)
            apply_w()
        if self.bias:
            with access.update("b", a, b) as (_, grad, apply_b):
                grad[...] = gb
                apply_b()

    @staticmethod
    def _chunks(a: int, b: int, n_rows: int, dtype) -> list[tuple[int, int]]:
        step = max(1, LOGIT_BYTES // max(1, n_rows * np.dtype(dtype).itemsize))
        return [(c, min(b, c + step)) for c in range(a, b, step)]

    def _logits(self, access, x, a, b, w, bv):
        """Logits of classes [a, b) given the tile ``w`` (and bias ``bv``) of rows [a, b), chunk by chunk."""
        for c0, c1 in self._chunks(a, b, x.shape[0], x.dtype):
            o = x @ w[c0 - a : c1 - a].T
            if bv is not None:
                o += bv[c0 - a : c1 - a]
            yield c0, c1, o

    # -- fused losses -------------------------------------------------------------------------
    def supports(self, loss: Loss) -> bool:
        """Whether :meth:`fused` computes ``loss`` itself."""
        return getattr(loss, "sampled", False) or type(loss) in (SoftmaxCrossEntropy, SoftmaxMarginHinge)

    def fused(self, access, x, y, loss: Loss, train: bool):
        """The loss of logits ``x @ W.T + b`` against labels ``y``; with ``train``, also dL/dx and the update.

        Returns ``(value, dx)`` (dx None when not training).
        """
        if train and getattr(loss, "sampled", False):
            return self._sampled(access, x, y, loss)
        return self._exact(access, x, y, loss, train)

    def _stream(self, access, x, fn) -> None:
        for a, b in self._tiles(access):
            with access.read("W", a, b) as w:
                if self.bias:
                    with access.read("b", a, b) as bv:
                        for c0, c1, o in self._logits(access, x, a, b, w, bv):
                            fn(c0, c1, o)
                else:
                    for c0, c1, o in self._logits(access, x, a, b, w, None):
                        fn(c0, c1, o)

    def _exact(self, access, x, y, loss, train):
        n = x.shape[0]
        rows = np.arange(n)
        scale = 1.0 / n if loss.reduction == "mean" else 1.0
        m = np.full(n, -np.inf)
        s = np.zeros(n)
        o_y = np.empty(n)

        def pass1(c0, c1, o):
            nonlocal m, s
            m_new = np.maximum(m, o.max(axis=1))
            s = s * np.exp(m - m_new) + np.exp(o - m_new[:, None]).sum(axis=1)
            m = m_new
            hit = (y >= c0) & (y < c1)
            o_y[hit] = o[rows[hit], y[hit] - c0]

        self._stream(access, x, pass1)
        lse = m + np.log(s)
        _check_loss_value(float(np.sum(lse)), train)  # an overflowed normaliser leaves either loss undefined
        hinge = isinstance(loss, SoftmaxMarginHinge)
        if not hinge:
            value = float(np.sum(lse - o_y)) * scale
            _check_loss_value(value, train)
            if not train:
                return value, None

            def grad_ce(c0, c1, o):
                p = np.exp(o - lse[:, None])
                hit = (y >= c0) & (y < c1)
                p[rows[hit], y[hit] - c0] -= 1.0
                return p * scale if scale != 1.0 else p

            return value, self._grad_pass(access, x, grad_ce)
        margin = loss.margin
        p_y = np.exp(o_y - lse)
        count = np.zeros(n)
        active_p = np.zeros(n)
        total = 0.0

        def terms(c0, c1, o):
            p = np.exp(o - lse[:, None])
            xj = p - p_y[:, None] + margin
            hit = (y >= c0) & (y < c1)
            xj[rows[hit], y[hit] - c0] = 0.0  # j == y is not a term
            return p, xj > 0, xj

        def pass2(c0, c1, o):
            nonlocal total
            p, act, xj = terms(c0, c1, o)
            total += float(np.sum(xj[act]))
            count[:] += act.sum(axis=1)
            active_p[:] += np.where(act, p, 0.0).sum(axis=1)

        self._stream(access, x, pass2)
        value = total * scale
        _check_loss_value(value, train)
        if not train:
            return value, None
        gp = active_p - count * p_y  # <g, p> with g = dJ/dp

        def grad_hinge(c0, c1, o):
            p, act, _ = terms(c0, c1, o)
            g = act.astype(p.dtype)
            hit = (y >= c0) & (y < c1)
            g[rows[hit], y[hit] - c0] = -count[hit]
            out = p * (g - gp[:, None])
            return out * scale if scale != 1.0 else out

        return value, self._grad_pass(access, x, grad_hinge)

    def _grad_pass(self, access, x, grad_logits):
        dx = np.zeros((x.shape[0], self.n_in), dtype=x.dtype)
        for a, b in reversed(self._tiles(access)):
            self._update_tile(access, x, a, b, grad_logits, dx)
        return dx

    def _sampled(self, access, x, y, loss):
        n = x.shape[0]
        scale = 1.0 / n if loss.reduction == "mean" else 1.0
        sampler = loss.sampler  # its size was checked against n_classes before the step began
        rng = getattr(sampler, "_rng", None)
        drawn_from = None if rng is None else rng.bit_generator.state
        if hasattr(loss, "n_samples"):
            drawn = sampler.sample(loss.n_samples)
            cand = np.unique(np.concatenate([y, drawn]))
        else:
            drawn = sampler.sample(n * loss.k).reshape(n, loss.k)
            cand = np.unique(np.concatenate([y, drawn.reshape(-1)]))
        try:
            W = access.gather("W", cand)
        except BaseException:  # refused (over budget, say) before anything moved: a retry draws the same
            if drawn_from is not None:
                rng.bit_generator.state = drawn_from
            raise
        try:
            bv = access.gather("b", cand) if self.bias else None
        except BaseException:
            access.release("W", cand)
            if drawn_from is not None:
                rng.bit_generator.state = drawn_from
            raise
        try:
            yi = np.searchsorted(cand, y)
            b_of = (lambda idx: bv[idx]) if bv is not None else (lambda idx: np.zeros(np.shape(idx), x.dtype))
            if hasattr(loss, "n_samples"):
                si = np.searchsorted(cand, drawn)
                logq_s = np.log(loss.n_samples * sampler.probability(drawn))
                logq_y = np.zeros(n)  # the true class is a candidate with certainty: no correction
                hits = drawn[None, :] == y[:, None]
                value, dz, dW_y, db_y, dW_o, db_o = sampled_softmax(
                    x, W[yi], b_of(yi), W[si], b_of(si), logq_y, logq_s, hits)
                others = si
            else:
                others = np.searchsorted(cand, drawn)
                value, dz, dW_y, db_y, dW_o, db_o = negative_sampling(x, W[yi], b_of(yi), W[others], b_of(others))
            idx = np.concatenate([yi, others.reshape(-1)])
            gW = segment_sum(idx, np.concatenate([dW_y, dW_o.reshape(-1, self.n_in)]), cand.size)
            gb = segment_sum(idx, np.concatenate([db_y, db_o.reshape(-1)]), cand.size)
            _check_loss_value(value, True)
        except BaseException:
            access.release("W", cand)
            if self.bias:
                access.release("b", cand)
            raise
        if scale != 1.0:
            gW *= scale
            gb *= scale
            dz *= scale
        access.update_rows("W", cand, W, gW.astype(W.dtype, copy=False))
        if self.bias:
            access.update_rows("b", cand, bv, gb.astype(bv.dtype, copy=False))
        return value * scale, dz.astype(x.dtype, copy=False)

    def __repr__(self) -> str:
        return f"Output({self.n_in}, {self.n_out}, bias={self.bias})"
