"""Candidate sampling for large outputs: a unigram^power sampler and the sampled losses' kernels.

Pure functions of arrays (no pager, no store): the output layer gathers the
rows of the candidates these kernels need and applies their gradients.

Sampled softmax (Jean et al. 2015; TensorFlow's ``sampled_softmax_loss``)
------------------------------------------------------------------------
For each example, the candidates are its true class and ``n`` classes drawn
(shared by the batch, with replacement) from Q.  Each sampled logit is
corrected by the log of its expected count, ``o'_s = o_s - log(n * Q(s))``
(the log-Q correction), so that ``sum_s exp(o'_s)`` is an importance-sampling
estimate of the partition function over the other classes; the true class is
in the candidate set with certainty and keeps its logit.  The loss is the
softmax cross-entropy over the candidates.  Sampled classes equal to the
example's true class ("accidental hits") are masked out.  As ``n`` grows the
gradient approaches the full softmax's (tests/test_outputs.py measures it).

Negative sampling (Mikolov et al. 2013, word2vec's SGNS)
--------------------------------------------------------
For each example, ``-log sigmoid(o_y) - sum_k log sigmoid(-o_{n_k})`` with
``k`` negatives per example drawn from Q = unigram^0.75.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError


class UnigramSampler:
    """Draws class ids with probability proportional to ``counts ** power``.

    Parameters
    ----------
    counts : array-like of shape (V,)
        Non-negative class frequencies (at least one positive).
    power : float
        0.75 is word2vec's choice; 1 samples by frequency, 0 uniformly.
    seed : int
        Seeds the draws.

    Notes
    -----
    Holds one float64 cumulative probability per class (8 bytes x V): the one
    V-sized array of a sampled output layer, built once, never per step.
    """

    def __init__(self, counts, power: float = 0.75, seed: int = 0) -> None:
        try:
            c = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"counts must be an array of class frequencies (numbers), got {type(counts).__name__}.") \
                from exc
        if c.ndim != 1 or c.size == 0:
            raise ConfigError(f"counts must be a 1-D array of class frequencies, got shape {c.shape}.")
        if not np.all(np.isfinite(c)) or np.any(c < 0) or not np.any(c > 0):
            raise ConfigError("counts must be finite, non-negative, and not all zero.")
        if isinstance(power, bool) or not isinstance(power, (int, float, np.integer, np.floating)) \
                or not np.isfinite(power) or power < 0:
            raise ConfigError(f"power must be a finite number >= 0, got {power!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}.")
        # Scaled by the largest count first: c ** power and the sum stay finite for any finite counts.
        w = np.where(c > 0, (c / c.max()) ** power, 0.0)  # classes never seen are never drawn
        self.n_classes = c.size
        self.power = float(power)
        total = w.sum()
        self._cdf = np.cumsum(w / total)
        self._cdf[-1] = 1.0
        self._rng = np.random.default_rng(int(seed))

    def probability(self, ids: np.ndarray) -> np.ndarray:
        """Q(c) of each id."""
        ids = np.asarray(ids, dtype=np.int64)
        prev = np.where(ids > 0, self._cdf[np.maximum(ids - 1, 0)], 0.0)
        return self._cdf[ids] - prev

    def sample(self, n: int) -> np.ndarray:
        """``n`` ids drawn with replacement from Q."""
        ids = np.searchsorted(self._cdf, self._rng.random(n), side="right")
        return np.minimum(ids, self.n_classes - 1).astype(np.int64)


def segment_sum(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[i] = sum of values[j] where idx[j] == i`` for i < n (rows accumulate, as repeated ids must).

    A sparse product (2-D) or a bincount (1-D): ``np.add.at`` did the same at
    8 ms a call for a few thousand rows here, more than the rest of the step.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if values.ndim == 1:
        return np.bincount(idx, weights=values, minlength=n).astype(values.dtype, copy=False)
    flat = values.reshape(idx.size, -1)
    A = sp.csr_matrix((np.ones(idx.size, dtype=flat.dtype), (idx, np.arange(idx.size))), shape=(n, idx.size))
    return np.asarray(A @ flat).reshape((n, *values.shape[1:]))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(sigmoid(x)) without overflow."""
    return -np.logaddexp(0.0, -x)


def sampled_softmax(z, W_true, b_true, W_s, b_s, logq_true, logq_s, hits):
    """Sampled softmax cross-entropy of a batch and its gradients.

    Parameters
    ----------
    z : (B, d) hidden vectors.
    W_true, b_true : (B, d), (B,) the true classes' rows and biases.
    W_s, b_s : (n, d), (n,) the sampled classes' rows and biases.
    logq_true, logq_s : (B,), (n,) log of each candidate's expected count, log(n * Q(c)).
    hits : (B, n) bool, sampled class == the example's true class (masked out).

    Returns
    -------
    value : float (summed over the batch)
    dz : (B, d); dW_true : (B, d); db_true : (B,); dW_s : (n, d); db_s : (n,)
    """
    o_true = np.einsum("ij,ij->i", z, W_true) + b_true - logq_true
    o_s = z @ W_s.T + b_s - logq_s
    o_s = np.where(hits, -np.inf, o_s)
    m = np.maximum(o_true, o_s.max(axis=1))
    e_true = np.exp(o_true - m)
    e_s = np.exp(o_s - m[:, None])
    total = e_true + e_s.sum(axis=1)
    value = float(np.sum(np.log(total) + m - o_true))
    g_true = e_true / total - 1.0  # d value / d o_true
    g_s = e_s / total[:, None]  # d value / d o_s (0 on hits)
    dz = g_true[:, None] * W_true + g_s @ W_s
    dW_true = g_true[:, None] * z
    dW_s = g_s.T @ z
    return value, dz, dW_true, g_true, dW_s, g_s.sum(axis=0)


def negative_sampling(z, W_pos, b_pos, W_neg, b_neg):
    """word2vec's negative-sampling objective of a batch and its gradients.

    Parameters
    ----------
    z : (B, d) hidden vectors.
    W_pos, b_pos : (B, d), (B,) the true classes' rows and biases.
    W_neg, b_neg : (B, k, d), (B, k) each example's negatives' rows and biases.

    Returns
    -------
    value : float; dz : (B, d); dW_pos : (B, d); db_pos : (B,); dW_neg : (B, k, d); db_neg : (B, k)
    """
    o_pos = np.einsum("ij,ij->i", z, W_pos) + b_pos
    o_neg = np.einsum("ikj,ij->ik", W_neg, z) + b_neg
    value = float(-np.sum(log_sigmoid(o_pos)) - np.sum(log_sigmoid(-o_neg)))
    g_pos = -np.exp(log_sigmoid(-o_pos))  # sigmoid(o) - 1
    g_neg = np.exp(log_sigmoid(o_neg))  # sigmoid(o)
    dz = g_pos[:, None] * W_pos + np.einsum("ik,ikj->ij", g_neg, W_neg)
    return value, dz, g_pos[:, None] * z, g_pos, g_neg[:, :, None] * z[:, None, :], g_neg


__all__ = ["UnigramSampler", "sampled_softmax", "negative_sampling", "log_sigmoid", "segment_sum"]
