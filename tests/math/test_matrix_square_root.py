"""PSD roots and the Bures map: closed-form properties in float64."""

import jax
import mpmath
import numpy as np
import pytest

from affjax import precision as precision_lib
from affjax.math import covariance as cov
from affjax.math import matrix_square_root as msr


def _spd(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(d, rank or d))
    return b @ b.T + 1e-3 * np.eye(d)


def test_sqrt_squares_back_and_inverse():
    a = _spd(12, 0)
    with jax.enable_x64(True):
        r = msr.roots(a)
        s, inv = np.asarray(r.sqrt), np.asarray(r.inv_sqrt)
    np.testing.assert_allclose(s @ s, a, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s @ inv, np.eye(12), atol=1e-8)


def test_pseudo_inverse_drops_null_space():
    a = np.diag([4.0, 9.0, 0.0, 0.0])  # exact null space: eigh returns exact zeros
    with jax.enable_x64(True):
        r = msr.roots(a)
        s, inv = np.asarray(r.sqrt), np.asarray(r.inv_sqrt)
    np.testing.assert_allclose(s @ inv @ s, s, atol=1e-10)  # Moore-Penrose identity
    np.testing.assert_allclose(inv, np.diag([0.5, 1 / 3, 0.0, 0.0]), atol=1e-15)


def test_bures_map_transports_covariance():
    sx, sy = _spd(8, 2), _spd(8, 3)
    with jax.enable_x64(True):
        a = np.asarray(msr.bures_map(sx, sy))
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    assert np.linalg.eigvalsh(a).min() > 0  # PSD
    np.testing.assert_allclose(a @ sx @ a, sy, rtol=1e-8, atol=1e-8)


def test_bures_map_of_commuting_diagonals():
    sx, sy = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.25])
    with jax.enable_x64(True):
        a = np.asarray(msr.bures_map(sx, sy))
    np.testing.assert_allclose(a, np.diag(np.sqrt(np.diag(sy) / np.diag(sx))), atol=1e-12)


def _bures_exact(sx, sy, digits=60):
    """A = Sy^1/2 (Sy^1/2 Sx Sy^1/2)^-1/2 Sy^1/2 in ``digits``-digit arithmetic (mpmath)."""

    def sqrt_and_inv(m):
        w, v = mpmath.eigsy(m)
        root = v * mpmath.diag([mpmath.sqrt(x) for x in w]) * v.T
        inv = v * mpmath.diag([1 / mpmath.sqrt(x) for x in w]) * v.T
        return root, inv

    with mpmath.workdps(digits):
        sx_m, sy_m = mpmath.matrix(sx.tolist()), mpmath.matrix(sy.tolist())
        ry, _ = sqrt_and_inv(sy_m)
        _, inner = sqrt_and_inv(ry * sx_m * ry)
        a = ry * inner * ry
        return np.array(a.tolist(), dtype=float)


def test_both_forms_against_a_60_digit_bures_map():
    # The float64 Cholesky form and the published form (two eigh, pseudo-inverse)
    # are each compared with the map computed in 60-digit arithmetic, not with each
    # other: the published form's error depends on the LAPACK build (one machine
    # differed from the Cholesky form by 7e-10 here, this one by 2e-10).
    # Bounds, relative to max|A|, with eps = 2.2e-16 and kappa = cond(Sx) ~ cond(Sy):
    # the Cholesky form is backward stable in Sx and Sy, error <= d * eps * kappa;
    # the published form squares the conditioning (Sy^1/2 Sx Sy^1/2), <= d * eps * kappa^2.
    # Measured here (d = 12, kappa 7e3 / 1.5e4): 3e-13 and 3e-10 (bounds 4e-11, 6e-7).
    sx, sy = _spd(12, 4), _spd(12, 5, rank=4)
    exact = _bures_exact(sx, sy)
    with jax.enable_x64(True):
        chol = np.asarray(msr.bures_map(sx, sy))
        published = np.asarray(msr._bures_roots(sx, sy))
    eps, d = np.finfo(np.float64).eps, sx.shape[0]
    kappa = max(np.linalg.cond(sx), np.linalg.cond(sy))
    scale = np.abs(exact).max()
    assert np.abs(chol - exact).max() <= d * eps * kappa * scale
    assert np.abs(published - exact).max() <= d * eps * kappa**2 * scale
    # and the Cholesky form is the more accurate one on this problem
    assert np.abs(chol - exact).max() < np.abs(published - exact).max()


def _residual(a, sx, sy):
    return np.linalg.norm(a @ sx @ a - sy) / np.linalg.norm(sy)


@pytest.mark.parametrize("scale", [1e8, 1e10])
def test_ill_conditioned_input_covariance(scale):
    # Sx = scale * (rank 3) + ridge: condition 1e14 / 1e16. At 1e16 the float64
    # Cholesky breaks down and the shifted retry takes over. Either way A must
    # be finite and transport Sx to Sy no worse than the published form does
    # (measured: 0.15 vs 0.50 and 0.85 vs 0.95 relative residual).
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 3))
    sx = scale * v @ v.T + 1e-6 * np.eye(40)
    sy = _spd(40, 6) / 40
    with jax.enable_x64(True):
        chol_ok = bool(np.all(np.isfinite(np.asarray(jax.numpy.linalg.cholesky(sx)))))
        a = np.asarray(jax.jit(msr.bures_map)(sx, sy))
        b = np.asarray(msr._bures_roots(sx, sy))
    assert chol_ok == (scale < 1e9)  # the second case does exercise the retry
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, a.T, atol=1e-12 * np.abs(a).max())
    assert _residual(a, sx, sy) < _residual(b, sx, sy)


def _centred_relu_layer(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ (np.eye(d) + 0.5 * rng.normal(size=(d, d)) / np.sqrt(d))
    y = np.maximum(x, 0)
    return [(v - v.mean(0)).astype(np.float32).astype(np.float64) for v in (x, y)]


def _factors(xc, yc, dtype):
    n = xc.shape[0]
    scale, floor = dtype(1 / (n - 1)), dtype(1e-6)
    return (cov.triangular_factor(jax.numpy.asarray(v, dtype), scale, floor) for v in (xc, yc))


def test_factored_form_against_a_60_digit_bures_map():
    # d > n, as in late layers of a small batch: condition numbers 5.6e6 / 1.7e6,
    # set by the 1e-6 ridge. Against the 60-digit map, relative to max|A|, the
    # factored form measured 7.8e-11 (the float64 Cholesky form: 3.6e-7, its
    # L^T Sy L squares the conditioning). Bound 45x the measured.
    xc, yc = _centred_relu_layer(12, 20, 0)
    n, d = xc.shape
    sx = xc.T @ xc / (n - 1) + 1e-6 * np.eye(d)
    sy = yc.T @ yc / (n - 1) + 1e-6 * np.eye(d)
    exact = _bures_exact(sx, sy)
    with jax.enable_x64(True):
        a = np.asarray(jax.jit(msr.bures_map_factored)(*_factors(xc, yc, np.float64)))
    np.testing.assert_allclose(a, a.T, atol=1e-14 * np.abs(a).max())
    assert np.abs(a - exact).max() <= 3.5e-9 * np.abs(exact).max()


def test_factored_form_in_float32_maps_the_data_as_float64_does():
    # What the score uses is the map applied to the samples, x_c A. In float32 on
    # a d > n layer (kappa 6.9e6 ~ 1/eps32) the factored form gives it to 5.7e-6
    # relative; the published form (bures_map in float32: two eigh, clipped
    # roots, pseudo-inverse) to 7.8e-4. Reference: the float64 factored map,
    # within 1e-10 of the 60-digit one (test above). Bound 13x the measured.
    xc, yc = _centred_relu_layer(64, 96, 11)
    n, d = xc.shape
    with jax.enable_x64(True):
        want = xc @ np.asarray(msr.bures_map_factored(*_factors(xc, yc, np.float64)))
    with precision_lib.matmul_scope("highest"):
        a32 = msr.bures_map_factored(*_factors(xc, yc, np.float32))
        sx = jax.numpy.asarray(xc.T @ xc / (n - 1) + 1e-6 * np.eye(d), np.float32)
        sy = jax.numpy.asarray(yc.T @ yc / (n - 1) + 1e-6 * np.eye(d), np.float32)
        published = msr.bures_map(sx, sy)
    assert a32.dtype == np.float32

    def err(a):
        return np.linalg.norm(xc @ np.asarray(a, np.float64) - want) / np.linalg.norm(want)

    assert err(a32) <= 7.2e-5
    assert err(published) > 10 * err(a32)  # why the score no longer uses it in float32


@pytest.mark.parametrize("n,d,floor", [(12, 20, 1e-6), (12, 30, 1e-6), (16, 24, 1e-3)])
def test_transport_in_span_coordinates_against_a_60_digit_bures_map(n, d, floor):
    # d > n: the score maps the inputs' coordinates in the samples' span (zero
    # past column n) without forming A. Against x A with A in 60 digits, relative
    # to max|x A|: measured 7.1e-12, 7.0e-12, 1.6e-14, i.e. 0.6-0.8 % of
    # eps * kappa (kappa: the covariances' condition number, 5.6e6, 1.1e7, 9.2e3),
    # the first-order bound of a backward-stable Cholesky + eigh, asserted here.
    from affjax import score as score_lib

    xc, yc = _centred_relu_layer(n, d, 0)
    with jax.enable_x64(True):
        x, y = (np.asarray(v) for v in score_lib._span_coordinates(xc, yc))
    k = x.shape[1]
    assert k == min(d, 2 * n) and np.all(x[:, n:] == 0)
    c = 1.0 / (n - 1)
    sx, sy = (c * v.T @ v + floor * np.eye(k) for v in (x, y))
    exact = x @ _bures_exact(sx, sy)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(msr.bures_transport)(x[:, :n], y, c, floor, c, floor))
    kappa = max(np.linalg.cond(sx), np.linalg.cond(sy))
    assert np.abs(got - exact).max() <= np.finfo(np.float64).eps * kappa * np.abs(exact).max()
