"""Covariance estimators against numpy / scikit-learn, in float64."""

import jax
import numpy as np
import pytest
from optional import HAVE_TORCH_EXTRA, requires_torch

from affjax.math import covariance

if HAVE_TORCH_EXTRA:
    from sklearn.covariance import LedoitWolf


@pytest.mark.parametrize("n,d", [(50, 1), (50, 3), (200, 40), (30, 100)])
def test_empirical_matches_numpy(n, d):
    x = np.random.default_rng(n + d).normal(size=(n, d)) * np.linspace(0.1, 3, d)
    with jax.enable_x64(True):
        got = np.asarray(covariance.empirical(x))
    want = np.cov(x, rowvar=False).reshape(d, d) + 1e-6 * np.eye(d)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@requires_torch
@pytest.mark.parametrize("n,d", [(50, 1), (50, 3), (200, 40), (30, 100), (500, 8)])
def test_ledoit_wolf_matches_sklearn(n, d):
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 5.0
    with jax.enable_x64(True):
        got = np.asarray(covariance.ledoit_wolf(x))
        shrink = float(covariance.ledoit_wolf_shrinkage(x))
    lw = LedoitWolf().fit(x)
    np.testing.assert_allclose(got, lw.covariance_ + 1e-6 * np.eye(d), rtol=1e-10, atol=1e-12)
    if d > 1:
        assert shrink == pytest.approx(lw.shrinkage_, rel=1e-10, abs=1e-14)


def test_ledoit_wolf_constant_data_has_no_nan():
    x = np.ones((20, 4))
    with jax.enable_x64(True):
        got = np.asarray(covariance.ledoit_wolf(x))
    np.testing.assert_allclose(got, 1e-6 * np.eye(4), atol=1e-18)


def test_gram_is_transposed_product():
    x = np.random.default_rng(3).normal(size=(300, 70))
    with jax.enable_x64(True):
        g = np.asarray(jax.jit(covariance.gram)(x))
        gv = np.asarray(jax.vmap(covariance.gram)(np.stack([x, 2 * x])))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(gv[1], 4 * (x.T @ x), rtol=1e-12)
