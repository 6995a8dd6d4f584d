"""What an activation call records, in one pass, against numpy's float64 means and exact counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import metrics, sites
from affjax.models import layers

T = metrics.SPARSITY_THRESHOLD


def _activations(shape, seed=0):
    """Normal entries, a tenth of them exactly 0, +-T (counted) and +-2T (not)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=flat.size // 10, replace=False)
    flat[picks] = rng.choice(np.float32([0.0, T, -T, 2 * T, -2 * T]), size=picks.size)
    return x


def _want(x, axes):
    mean = x.astype(np.float64).mean(axis=axes) if axes else x.astype(np.float64)
    counts = (np.abs(x) <= np.float32(T)).reshape(x.shape[0], -1).sum(axis=1)
    return mean, counts / np.prod(x.shape[1:])


@pytest.mark.parametrize(
    "shape,axes",
    [
        ((3, 9, 7, 5), (1, 2)),  # NHWC conv: the first axis, then the rest, counts by the minor
        ((3, 5, 9, 7), (2, 3)),  # the minor axis reduced: one four-output reduction
        ((3, 11, 6), (2,)),
        ((3, 11, 6), (1,)),
        ((2, 5, 4, 6, 3), (1, 3)),  # apart: axis 3 is axis 2 after the first stage
        ((2, 5, 4, 6, 3), (1, 2, 3)),
        ((2, 5, 4, 6, 3), (2, 4)),
    ],
)
def test_one_pass_record_is_the_means_and_the_sparsity(shape, axes):
    x = _activations(shape)
    y = np.tanh(x)
    got = jax.jit(lambda a, b: layers.reduce_record(a, b, axes))(x, y)
    for name, v in (("x", x), ("y", y)):
        mean, sparsity = _want(v, axes)
        # float32 sums of <= 63 terms of size <= 4: measured |error| 6.3e-8; 1e-6 is 16x.
        np.testing.assert_allclose(np.asarray(got[name]), mean, rtol=0, atol=1e-6)
        # Counts are exact integers; one float32 division.
        np.testing.assert_allclose(np.asarray(got["sparsity_" + name]), sparsity, rtol=2e-7)
        assert got["sparsity_" + name].dtype == jnp.float32


def test_half_precision_is_averaged_in_float32():
    x = _activations((2, 8, 8, 4)).astype(jnp.bfloat16)
    y = jnp.maximum(x, 0)
    got = layers.reduce_record(x, y, (1, 2))
    assert got["x"].dtype == jnp.float32
    mean, _ = _want(np.asarray(x, np.float32), (1, 2))
    np.testing.assert_allclose(np.asarray(got["x"]), mean, atol=1e-6)


def test_nan_is_kept_in_the_means_and_not_counted_as_zero():
    x = _activations((2, 4, 4, 3))
    x[0, 1, 1, 2] = np.nan
    got = layers.reduce_record(x, x, (1, 2))
    assert np.isnan(np.asarray(got["x"])[0, 2]) and np.isfinite(np.asarray(got["x"])[1]).all()
    _, sparsity = _want(x, (1, 2))  # |nan| <= T is False in numpy too
    np.testing.assert_allclose(np.asarray(got["sparsity_x"]), sparsity, rtol=2e-7)


def test_generic_sites_record_the_same_in_one_pass():
    x = _activations((3, 6, 5, 4))
    y = np.maximum(x, 0)
    got = sites.generic_record(jnp.asarray(x), jnp.asarray(y), feature_axis=-1)
    mean, sparsity = _want(y, (1, 2))
    np.testing.assert_allclose(np.asarray(got["y"]), mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["sparsity_y"]), sparsity, rtol=2e-7)
    # A site that changes width keeps the separate reductions.
    wide = sites.generic_record(jnp.asarray(x), jnp.asarray(y[..., :2]), feature_axis=-1)
    assert wide["x"].shape == (3, 4) and wide["y"].shape == (3, 2)
    np.testing.assert_allclose(np.asarray(wide["sparsity_x"]), _want(x, ())[1], rtol=2e-7)
