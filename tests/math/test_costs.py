"""The squared-distance cost and the matched W2, against direct differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import affinity_score
from affjax import score as score_lib
from affjax.math import costs


def _points(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5


def test_numpy_and_jax_agree_with_direct_differences():
    t, y = _points(40, 7, 0)
    direct = ((t[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    host = costs.sq_euclidean(t, y)
    assert isinstance(host, np.ndarray)
    with jax.enable_x64(True):
        dev = np.asarray(costs.sq_euclidean(jnp.asarray(t), jnp.asarray(y)))
    # float64 expansion: entries ~10, cancellation error a few ulps of |t|^2 + |y|^2.
    np.testing.assert_allclose(host, direct, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dev, direct, rtol=0, atol=1e-13)
    assert np.all(host >= 0) and np.all(dev >= 0)


def test_matched_cost_is_the_sum_over_pairs():
    t, y = _points(30, 5, 1)
    perm = np.random.default_rng(2).permutation(30).astype(np.int32)
    with jax.enable_x64(True):
        got = float(costs.matched_cost(jnp.asarray(t), jnp.asarray(y), jnp.asarray(perm)))
        batched = costs.matched_cost(
            jnp.asarray(np.stack([t, t])), jnp.asarray(np.stack([y, y])), jnp.asarray([perm, perm])
        )
    want = sum(float(((t[i] - y[perm[i]]) ** 2).sum()) for i in range(30))
    assert got == pytest.approx(want, rel=1e-14)
    np.testing.assert_array_equal(np.asarray(batched), [got, got])


def _bf16_cost(t, y):
    """The cost as a TPU's default matmul would build it: operands rounded to bfloat16."""
    r = lambda a: a.astype(jnp.bfloat16).astype(a.dtype)  # noqa: E731
    cross = jnp.matmul(r(t), r(y).T, precision=jax.lax.Precision.HIGHEST)
    sq_t, sq_y = jnp.sum(t * t, axis=1), jnp.sum(y * y, axis=1)
    return jnp.maximum(sq_t[:, None] + sq_y[None, :] - 2.0 * cross, 0.0)


def test_auction_w2_comes_from_the_points_not_the_rounded_matrix(monkeypatch):
    # Issue 8: with a bf16-rounded product the matrix total came out 4.5 % high.
    # The matched W2 is a sum over real pairs, so it is a true W2 of some matching:
    # never below the optimum, and only above it by a worse matching's excess.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(96, 24))
    y = np.maximum(x, 0) + 0.1 * np.tanh(x)
    exact = affinity_score(x, y, solver="host")
    monkeypatch.setattr(score_lib.costs, "sq_euclidean", _bf16_cost)
    score_lib._score_jit.clear_cache()
    try:
        got = affinity_score(x, y, solver="auction")
    finally:
        score_lib._score_jit.clear_cache()
    w2, w2_opt = float(got.w2), float(exact.w2)
    assert w2 >= w2_opt * (1 - 1e-12)
    # Measured: the bf16 matrix picks the optimal matching here (excess 0); allow 1e-3.
    assert w2 <= w2_opt * (1 + 1e-3)
