"""Side metrics against the PyTorch reference (float64) and scikit-learn."""

import jax
import numpy as np
import pytest
from optional import HAVE_TORCH_EXTRA, requires_torch

from affjax import metrics

if HAVE_TORCH_EXTRA:
    import torch
    from sklearn.linear_model import LinearRegression

    from converters import reference


def _data(n, d, seed, ill=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if ill:  # near-collinear columns: exercises the rank cutoff of the fit
        x[:, 1] = x[:, 0] + 1e-9 * rng.normal(size=n)
    return x, np.maximum(x + 0.3, 0) + 0.01 * rng.normal(size=(n, d))


@requires_torch
@pytest.mark.parametrize(
    "n,d,ill", [(100, 10, False), (64, 64, False), (50, 80, False), (128, 32, True)]
)
def test_metrics_match_reference(n, d, ill):
    x, y = _data(n, d, n + d, ill)
    with jax.enable_x64(True):
        got = {
            "cka": float(metrics.cka(x, y)),
            "norm": float(metrics.norm_diff(x, y)),
            "r2": float(metrics.r2(x, y)),
        }
    f64 = torch.float64
    assert got["cka"] == pytest.approx(reference.linear_cka(x, y, dtype=f64), rel=1e-10)
    assert got["norm"] == pytest.approx(reference.norm_diff(x, y, dtype=f64), rel=1e-12)
    assert got["r2"] == pytest.approx(LinearRegression().fit(x, y).score(x, y), abs=1e-8)
    assert got["r2"] == pytest.approx(reference.r2_score(x, y, dtype=f64), abs=1e-8)


@requires_torch
@pytest.mark.parametrize("d", [1, 7, 64])
def test_entropy_matches_torch_histc(d):
    x = np.random.default_rng(d).normal(size=(40, d)).astype(np.float32)
    x[3] = 0.25  # constant row: histc widens the range to [v - 1, v + 1]
    assert float(metrics.entropy(x)) == pytest.approx(reference.entropy_batch(x), abs=1e-5)


def test_entropy_closed_forms():
    d = 16
    spaced = np.linspace(0, 1, d, dtype=np.float32)[None]  # one value per bin
    assert float(metrics.entropy(spaced)) == pytest.approx(2 * np.log(d), abs=1e-5)
    assert float(metrics.entropy(np.full((1, d), 3.0, np.float32))) == pytest.approx(np.log(d))


@requires_torch
def test_sparsity_counts_small_entries():
    t = np.array([0.0, 1e-3, -1e-3, 2e-3, -5.0, 1e-4, 0.5, 1.0], np.float32).reshape(2, 2, 2)
    assert float(metrics.sparsity(t)) == pytest.approx(4 / 8)
    assert float(metrics.sparsity(t)) == pytest.approx(reference.sparsity(torch.from_numpy(t)))


def test_cka_identities():
    x, y = _data(60, 5, 0)
    with jax.enable_x64(True):
        assert float(metrics.cka(x, x)) == pytest.approx(1.0, abs=1e-12)
        assert float(metrics.cka(3 * x + 1, y)) == pytest.approx(float(metrics.cka(x, y)))


def test_r2_constant_output_conventions():
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.ones((30, 2))
    with jax.enable_x64(True):
        assert float(metrics.r2(x, y)) == 1.0  # constant output, perfectly predicted
