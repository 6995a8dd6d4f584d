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


def _relu_layer(n, d, seed):
    """Samples like an activation's when d > n: correlated inputs, rank n - 1 once centred."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ (np.eye(d) + 0.5 * rng.normal(size=(d, d)) / np.sqrt(d))
    return (x - x.mean(0)).astype(np.float32)


def test_triangular_factor_is_a_factor_of_the_covariance():
    # float64: R^T R = c X^T X + f I to round-off (measured 7.9e-16 of max|S|; 1e-13).
    xc = _relu_layer(64, 96, 11).astype(np.float64)
    scale, floor = 1 / 63, 1e-6
    want = scale * xc.T @ xc + floor * np.eye(96)
    with jax.enable_x64(True):
        r = np.asarray(covariance.triangular_factor(xc, scale, floor))
    assert np.allclose(r, np.triu(r))
    assert np.abs(r.T @ r - want).max() <= 1e-13 * np.abs(want).max()


def test_triangular_factor_float32_keeps_the_ridge_directions():
    # d > n: the covariance's condition number is 7e6, about 1 / eps32, and a
    # float32 Cholesky of it loses the ridge directions or fails. The QR of the
    # stack sees a condition number of 2.6e3: R agrees with the float64 factor
    # row by row (rows are defined up to sign) to 5.5e-7 of max|R| (bound 100x).
    xc = _relu_layer(64, 96, 11)
    with jax.enable_x64(True):
        r64 = np.asarray(covariance.triangular_factor(xc.astype(np.float64), 1 / 63, 1e-6))
    r32 = np.asarray(covariance.triangular_factor(xc, np.float32(1 / 63), np.float32(1e-6)))
    assert r32.dtype == np.float32
    signs = np.sign(np.diag(r32)) * np.sign(np.diag(r64))
    assert np.abs(signs[:, None] * r32 - r64).max() <= 5.5e-5 * np.abs(r64).max()


@pytest.mark.parametrize("n,d", [(50, 3), (30, 100)])
def test_ledoit_wolf_terms_are_the_shrunk_covariance(n, d):
    x = np.random.default_rng(n).normal(size=(n, d)) * np.linspace(0.5, 2, d) + 1.0
    with jax.enable_x64(True):
        cov, scale, floor = covariance.ledoit_wolf_terms(x)
        lw = np.asarray(covariance.ledoit_wolf(x))
    xc = x - x.mean(0)
    np.testing.assert_allclose(np.asarray(cov), lw, rtol=0, atol=1e-15)
    np.testing.assert_allclose(float(scale) * xc.T @ xc + float(floor) * np.eye(d), lw, atol=1e-13)
