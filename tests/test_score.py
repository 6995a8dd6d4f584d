"""affinity_score: closed forms, published figures, the PyTorch reference, transforms, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optional import HAVE_TORCH_EXTRA, requires_torch

from affjax import affinity_score
from affjax.cli import demo_rows

if HAVE_TORCH_EXTRA:
    import torch

    from converters.reference import rho_aff


def _affine(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, size=d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = (q * rng.uniform(0.5, 2, size=d)) @ q.T  # symmetric PD, spectrum in [0.5, 2]
    return x, x @ a + rng.normal(size=d)


@pytest.mark.parametrize("n,d", [(200, 1), (300, 8), (500, 32)])
def test_psd_affine_map_scores_one(n, d):
    x, y = _affine(n, d, n + d)
    r = affinity_score(x, y)
    assert r.score.dtype == jnp.float64
    # The 1e-6 ridge makes the fitted map differ from the true one by O(1e-6 / variance);
    # variances here are O(1).
    assert abs(float(r.score) - 1.0) <= 1e-6
    assert not bool(r.degenerate) and bool(r.finite) and bool(r.converged)


def test_one_dimension_is_the_sorted_matching():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 1))
    y = np.tanh(3 * x) + 0.1 * rng.normal(size=(400, 1))
    r = affinity_score(x, y)
    sx, sy = np.var(x, ddof=1) + 1e-6, np.var(y, ddof=1) + 1e-6
    t = np.sqrt(sy / sx) * (x[:, 0] - x.mean())  # 1-D Bures map, centred on my
    w2 = np.mean((np.sort(t) - np.sort(y[:, 0] - y.mean())) ** 2)
    assert float(r.w2) == pytest.approx(w2, rel=1e-12)
    assert float(r.score) == pytest.approx(1 - np.sqrt(w2 / (2 * sy)), rel=1e-12)
    # the host solver on the full problem agrees with the 1-D closed form
    y2 = np.concatenate([y, np.zeros_like(y)], axis=1)
    x2 = np.concatenate([x, np.zeros_like(x)], axis=1)
    assert float(affinity_score(x2, y2, solver="host").w2) == pytest.approx(w2, rel=1e-9)


def test_published_notebook_figures():
    # DESIGN.md: x^k -> 1.00 .71 .58 .40 .29 .20; ReLU/Tanh/Sigmoid -> .49 .67 .77 (2 decimals)
    for case, published, ours in demo_rows(solver="host"):
        assert ours == pytest.approx(published, abs=0.005 + 1e-9), case


_PARITY_CASES = [
    (50, 1, "relu"),
    (50, 20, "tanh"),
    (64, 200, "relu"),
    (256, 64, "gelu"),
    (512, 512, "relu"),
    (200, 300, "gelu"),  # n < d <= 2n: span coordinates, inputs in n of them
    (1024, 16, "sigmoid"),
    (300, 1024, "tanh"),
]


def _activation(name, x):
    t = torch.from_numpy(x)
    fn = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": torch.nn.functional.gelu,
    }[name]
    return fn(t).numpy()


def _float64_bound(x, y):
    """First-order bound on |score difference| between two backward-stable float64 computations.

    Each Bures map is exact for covariances perturbed by O(eps) relative, which moves
    the score by at most ~kappa * eps (kappa: the covariances' condition number, ~1e6
    to 1e7 when d >= n, where the 1e-6 ridge is the smallest eigenvalue); the sums
    over n samples add n * eps. Factor 4 for the two computations and the cost.
    Measured: 0 to 3e-16 for d < n, 1e-13 to 9e-13 for d >= n (bounds 1e-13, 2e-9).
    """
    eps = np.finfo(np.float64).eps
    n, d = x.shape
    kappa = max(np.linalg.cond(np.atleast_2d(np.cov(v.T)) + 1e-6 * np.eye(d)) for v in (x, y))
    return 4 * eps * (kappa + n)


@requires_torch
@pytest.mark.parametrize("n,d,act", _PARITY_CASES)
@pytest.mark.parametrize("shrinkage", [False, True])
def test_matches_pytorch_reference_float64(n, d, act, shrinkage):
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) - 0.3
    y = _activation(act, x)
    want = rho_aff(x, y, correct_cov=shrinkage, dtype=torch.float64)
    got = float(affinity_score(x, y, shrinkage=shrinkage).score)
    assert abs(got - want) <= _float64_bound(x, y), (n, d, act)


@requires_torch
@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 512])
def test_matches_pytorch_reference_n2048(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(2048, d))
    y = np.maximum(x, 0)
    want = rho_aff(x, y, dtype=torch.float64)
    assert abs(float(affinity_score(x, y).score) - want) <= _float64_bound(x, y)


def test_float32_mode_close_to_float64():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(256, 32))
    y = np.tanh(x)
    r64 = affinity_score(x, y)
    r32 = affinity_score(x, y, dtype="float32")
    assert r32.score.dtype == jnp.float32
    # measured |diff| 2.1e-8 on this well-conditioned problem (kappa ~ 10); 1e-6 is 47x.
    assert float(r32.score) == pytest.approx(float(r64.score), abs=1e-6)


@pytest.mark.parametrize("shrinkage", [False, True])
def test_float32_close_to_float64_when_d_exceeds_n(shrinkage):
    # d > n: the 1e-6 ridge sets the covariances' small eigenvalues (condition
    # number 7e6, about 1 / eps32). float32 takes the Bures map from the samples'
    # triangular factors through an SVD: measured |diff| 9.1e-8 (5.2e-8 with
    # shrinkage); the published form it replaced was off by 8.9e-5. Bound 1e-6.
    rng = np.random.default_rng(96)
    x = rng.normal(size=(64, 96)) @ (np.eye(96) + 0.5 * rng.normal(size=(96, 96)) / np.sqrt(96))
    x = x.astype(np.float32)
    y = np.maximum(x, 0)
    r64 = affinity_score(x, y, shrinkage=shrinkage, solver="host")
    r32 = affinity_score(x, y, shrinkage=shrinkage, solver="host", dtype="float32")
    assert r32.score.dtype == jnp.float32
    assert abs(float(r32.score) - float(r64.score)) <= 1e-6


def test_import_leaves_global_x64_untouched():
    affinity_score(np.ones((4, 2)) * np.arange(4)[:, None], np.ones((4, 2)))
    assert not jax.config.jax_enable_x64


class TestTransforms(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_identical(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(80, 6))
        y = np.maximum(x, 0)
        with jax.enable_x64(True):
            fn = self.variant(lambda a, b: affinity_score(a, b).score)
            got = fn(jnp.asarray(x), jnp.asarray(y))
        assert float(got) == float(affinity_score(x, y).score)

    def test_vmap_equals_loop(self):
        rng = np.random.default_rng(1)
        xs = rng.normal(size=(4, 60, 5))
        ys = np.tanh(xs) + 0.05 * xs**2
        batched = affinity_score(xs, ys)
        with jax.enable_x64(True):
            vmapped = jax.vmap(lambda a, b: affinity_score(a, b))(jnp.asarray(xs), jnp.asarray(ys))
        loop = [affinity_score(a, b) for a, b in zip(xs, ys, strict=True)]
        for i, r in enumerate(loop):
            assert float(batched.score[i]) == float(r.score)
            assert float(vmapped.score[i]) == float(r.score)
            assert float(vmapped.w2[i]) == float(r.w2)

    @pytest.mark.timeout(300, method="thread")
    def test_vmapped_batch_of_16_at_d_512(self):
        # This shape once hung XLA:CPU: two independent Cholesky calls per problem
        # in one vmapped graph with the host solver's pure_callback.
        rng = np.random.default_rng(3)
        xs = rng.normal(size=(16, 1024, 512))
        ys = np.maximum(xs, 0)
        batched = affinity_score(xs, ys)
        for i in (0, 15):
            single = affinity_score(xs[i], ys[i])
            np.testing.assert_allclose(float(batched.score[i]), float(single.score), rtol=1e-12)

    def test_no_retrace_for_same_shapes(self):
        from affjax import score as score_lib

        rng = np.random.default_rng(2)
        # The kernel is looked up when the jitted entry point traces: count its traces.
        # A shape no other test uses, so the first call must trace once and no more.
        counted = chex.assert_max_traces(score_lib.affinity, n=1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(score_lib, "affinity", counted)
            for _ in range(3):
                affinity_score(rng.normal(size=(31, 3)), rng.normal(size=(31, 3)))
        chex.clear_trace_counter()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        affinity_score(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        affinity_score(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"\[n, 1\]"):
        affinity_score(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="unknown dtype"):
        affinity_score(np.ones((5, 2)), np.ones((5, 2)), dtype="float16")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_gives_flagged_nan(bad):
    x = np.random.default_rng(0).normal(size=(20, 3))
    y = np.tanh(x)
    y[3, 1] = bad
    r = affinity_score(x, y)
    assert np.isnan(float(r.score)) and not bool(r.finite)


@requires_torch
def test_constant_output_is_flagged_degenerate():
    x = np.random.default_rng(0).normal(size=(50, 4))
    r = affinity_score(x, np.full_like(x, 0.5))
    # A = 0 maps every point to the (exact) output mean: W2 = 0, score 1, as the reference.
    assert bool(r.degenerate)
    assert float(r.score) == pytest.approx(1.0, abs=1e-12)  # mean(y) - y rounds to ~1e-17
    assert rho_aff(x, np.full_like(x, 0.5), dtype=torch.float64) == 1.0


@pytest.mark.parametrize("n,d", [(120, 4), (200, 64)])
def test_auction_backend_certifies_the_host_optimum(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d))
    y = np.maximum(x, 0) + 0.1 * np.tanh(x)
    a = affinity_score(x, y, solver="auction")
    h = affinity_score(x, y, solver="host")
    assert bool(a.converged)
    assert float(a.gap) <= 1e-6 * float(h.w2)  # certified within 1e-6 relative
    assert float(h.w2) - 1e-12 <= float(a.w2) <= float(h.w2) + float(a.gap) + 1e-12
    assert float(a.score) == pytest.approx(float(h.score), abs=1e-6)


@pytest.mark.parametrize("shrinkage", [False, True])
@pytest.mark.parametrize("n,d,pad", [(40, 3, 13), (64, 48, 16), (30, 100, 28)])
def test_width_padding_changes_no_score(n, d, pad, shrinkage):
    # Signatures pad calls with zero columns to shared widths (score.py: padded
    # columns carry scalar covariance blocks, so the map and W2 are unchanged).
    # Exact in exact arithmetic; measured in float64: score |diff| <= 2.2e-16, w2
    # relative <= 1.4e-15. Tolerances 1e-14 / 1e-13: 45x and 70x the measured.
    from affjax import score as score_lib

    rng = np.random.default_rng(d)
    x = rng.normal(size=(n, d))
    y = np.tanh(x) + 0.1 * x**2
    padded = [np.concatenate([v, np.zeros((n, pad))], axis=1) for v in (x, y)]
    with jax.enable_x64(True):
        kernel = jax.jit(
            lambda a, b, dim: score_lib.affinity(
                a, b, shrinkage=shrinkage, solver="host", rtol=1e-6, dim=dim
            )
        )
        got = kernel(*(jnp.asarray(v) for v in padded), jnp.int32(d))
    want = affinity_score(x, y, shrinkage=shrinkage)
    assert abs(float(got.score) - float(want.score)) <= 1e-14
    assert abs(float(got.w2) - float(want.w2)) <= 1e-13 * float(want.w2)


@pytest.mark.parametrize("n,d", [(20, 30), (20, 64)])
def test_span_coordinates_keep_every_distance(n, d):
    # Coordinates in an orthonormal basis of the joint span: all pairwise
    # distances and inner products of the 2n centred samples are kept (to
    # round-off, bound 1e-12 relative; measured ~1e-15), k = min(d, 2n), and the
    # inputs' coordinates are exactly zero past column n.
    from affjax import score as score_lib

    rng = np.random.default_rng(d)
    xc, yc = (v - v.mean(0) for v in (rng.normal(size=(n, d)), rng.normal(size=(n, d)) ** 2))
    with jax.enable_x64(True):
        cx, cy = (np.asarray(v) for v in score_lib._span_coordinates(xc, yc))
    assert cx.shape == cy.shape == (n, min(d, 2 * n))
    assert np.all(cx[:, n:] == 0)
    z, c = np.concatenate([xc, yc]), np.concatenate([cx, cy])
    np.testing.assert_allclose(c @ c.T, z @ z.T, rtol=0, atol=1e-12 * np.abs(z @ z.T).max())


def test_precision_is_a_deprecated_alias_of_dtype():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 3))
    y = np.tanh(x)
    with pytest.warns(DeprecationWarning, match="use dtype="):
        old = affinity_score(x, y, precision="float32")
    new = affinity_score(x, y, dtype="float32")
    assert old.score.dtype == jnp.float32
    assert float(old.score) == float(new.score)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="disagree"):
        affinity_score(x, y, dtype="float64", precision="float32")


def test_gap_above_rtol_is_uncertified_not_ok():
    # float32 prices: the certificate's rounding allowance alone is ~1e-6 of the
    # cost magnitude, so rtol = 1e-9 cannot be certified; the score is kept.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(64, 8))
    y = np.maximum(x, 0)
    loose = affinity_score(x, y, solver="auction", dtype="float32", rtol=1e-9)
    assert bool(loose.converged) and not bool(loose.certified)
    assert float(loose.gap) > 1e-9 * float(loose.w2)
    assert np.isfinite(float(loose.score))
    exact = affinity_score(x, y, solver="host")
    assert bool(exact.certified) and float(exact.gap) == 0.0
    f64 = affinity_score(x, y, solver="auction", rtol=1e-6)
    assert bool(f64.certified) and float(f64.gap) <= 1e-6 * float(f64.w2)


def test_host_finishing_in_numpy_equals_the_compiled_finish():
    # The CPU path finishes scores in numpy (score.from_matching on host arrays, no
    # kernel). Three stacked problems: an ordinary one, a constant output (degenerate,
    # A = 0) and a NaN input; the third also unconverged. Checked against W2 summed
    # pair by pair in Python and against the jitted, vmapped JAX finish.
    from scipy.optimize import linear_sum_assignment

    from affjax import score

    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 40, 6))
    y = np.maximum(x + 0.3, 0)
    y[1] = 2.5  # constant output
    x[2, 5, 1] = np.nan
    with jax.enable_x64(True):
        points = jax.device_get(jax.vmap(score.mapped_points)(jnp.asarray(x), jnp.asarray(y)))
        perms = np.stack([linear_sum_assignment(np.square(t[:, None] - u[None]).sum(-1))[1]
                          for t, u in zip(points.t, points.y, strict=True)])  # fmt: skip
        converged = np.array([True, True, False])
        host = score.from_matching(points, perms, converged=converged, rtol=1e-6)
        compiled = jax.jit(jax.vmap(lambda p, q, c: score.from_matching(p, q, converged=c)))(
            jax.tree.map(jnp.asarray, points), jnp.asarray(perms), jnp.asarray(converged)
        )
    assert isinstance(host.score, np.ndarray) and host.score.shape == (3,)
    w2 = np.mean(np.sum((points.t[0] - points.y[0][perms[0]]) ** 2, axis=1))
    np.testing.assert_allclose(host.w2[0], w2, rtol=1e-13)  # summation order only
    np.testing.assert_allclose(host.score[0], 1 - np.sqrt(w2 / points.normaliser[0]), rtol=1e-13)
    assert 0 < host.score[0] < 1 and host.w2[1] == 0 and bool(host.degenerate[1])
    assert bool(host.certified[0]) and bool(host.certified[1]) and not bool(host.certified[2])
    assert np.isnan(host.score[2]) and not bool(host.finite[2]) and not bool(host.converged[2])
    for field in host._fields:
        np.testing.assert_allclose(getattr(host, field), getattr(compiled, field), rtol=1e-13)
