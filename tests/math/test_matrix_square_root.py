"""PSD roots and the Bures map: closed-form properties in float64."""

import jax
import numpy as np

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
