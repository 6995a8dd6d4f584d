r"""The affinity score: how far a function is from a PSD-affine map on its data.

For inputs ``x`` and outputs ``y`` of an activation, both ``[n, d]``:

1. :math:`\Sigma_x, \Sigma_y` covariances (+ ridge), means :math:`m_x, m_y`;
2. :math:`A` the Bures map (:func:`affjax.math.matrix_square_root.bures_map`),
   or 0 when :math:`\mathrm{tr}\,\Sigma_y \le 2\cdot 10^{-6} d` (constant output);
3. :math:`t_i = A (x_i - m_x) + m_y`;
4. :math:`W = \min_\sigma \frac1n \sum_i \|t_i - y_{\sigma(i)}\|^2`, exactly;
5. :math:`\rho = 1 - \sqrt{W / (2\,\mathrm{tr}\,\Sigma_y)}`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from affjax import precision as precision_lib
from affjax.math import costs, covariance, matrix_square_root
from affjax.solvers import assignment, host

__all__ = [
    "DEGENERATE_TRACE",
    "AffinityResult",
    "MappedPoints",
    "affinity",
    "affinity_of_points",
    "affinity_score",
    "from_matching",
    "mapped_points",
    "mapped_points_each",
]

#: The published method maps to a constant when tr(Sy) <= DEGENERATE_TRACE * d.
DEGENERATE_TRACE = 2e-6


class AffinityResult(NamedTuple):
    """Result of :func:`affinity_score`; every field has the batch shape of the call."""

    score: jax.Array  # 1 - sqrt(w2 / normaliser); NaN when not finite or not converged
    w2: jax.Array  # exact squared 2-Wasserstein distance between A-mapped x and y
    normaliser: jax.Array  # 2 tr(Sy)
    gap: jax.Array  # certified bound on w2's excess over the optimum (0: exact solver)
    degenerate: jax.Array  # bool: tr(Sy) below threshold, A = 0
    finite: jax.Array  # bool: inputs were all finite
    converged: jax.Array  # bool: the assignment solver finished
    certified: jax.Array  # bool: gap <= rtol * w2 (always True for the exact solvers)


def _sorted_w2(t: jax.Array, y: jax.Array) -> jax.Array:
    # In one dimension the monotone matching is optimal for any convex cost.
    return jnp.mean((jnp.sort(t[:, 0]) - jnp.sort(y[:, 0])) ** 2)


def affinity(
    x: jax.Array,
    y: jax.Array,
    *,
    shrinkage: bool = False,
    solver: str = "auto",
    rtol: float = 1e-6,
    dim=None,
) -> AffinityResult:
    """The score of ``[n, d]`` arrays: the traceable kernel of :func:`affinity_score`.

    Pure and unchecked: computes in the dtype of ``x`` and ``y`` (create
    float64 inputs inside ``jax.enable_x64``), works under ``jit``/``vmap``,
    takes one ``[n, d]`` pair (``vmap`` it for more). Every matmul runs at
    ``Precision.HIGHEST``, whatever the platform default.

    ``dim`` (may be traced) is the true dimension when the last ``d - dim``
    columns of both ``x`` and ``y`` are zero padding: such columns carry
    exactly scalar covariance blocks, like the complement of the samples' span
    below, so only the trace and the thresholds need the true dimension.
    Padding lets calls of nearby widths share one compiled function.
    """
    with precision_lib.matmul_scope("highest"):
        return _affinity(x, y, shrinkage=shrinkage, solver=solver, rtol=rtol, dim=dim)


class MappedPoints(NamedTuple):
    """Steps 1-3 of the score: the point clouds whose W2 step 4 measures.

    ``t`` and ``y`` are centred on ``m_y`` (distances are what count); when
    ``d > 2n`` (in float64 when ``d > n``) they are coordinates in an
    orthonormal basis of the samples' span, which preserves every distance.
    """

    t: jax.Array  # [n, k] A-mapped centred inputs
    y: jax.Array  # [n, k] centred outputs
    normaliser: jax.Array  # 2 tr(Sy)
    degenerate: jax.Array  # bool: tr(Sy) below threshold, A = 0
    finite: jax.Array  # bool: inputs were all finite


def mapped_points(x: jax.Array, y: jax.Array, *, shrinkage: bool = False, dim=None) -> MappedPoints:
    """Steps 1-3 of :func:`affinity` (covariances, Bures map, mapped inputs), traceable.

    With :func:`from_matching` around any assignment solver, this splits the
    score where the solver sits: the CPU path solves on the host between two
    compiled stages (no callback inside XLA, so both stages can be cached on
    disk), the accelerator path keeps all three in one graph.
    """
    with precision_lib.matmul_scope("highest"):
        return _mapped_points(x, y, shrinkage=shrinkage, dim=dim)


def mapped_points_each(
    x: jax.Array, y: jax.Array, shrinkages: tuple[bool, ...], *, dim=None
) -> tuple[MappedPoints, ...]:
    """:func:`mapped_points` for each of ``shrinkages``, sharing what they share.

    The centring and, when ``d > n``, the samples' span coordinates (a QR of the
    ``[d, 2n]`` data: at n = 256, d = 4096, 110 ms of the 150 ms one score takes
    in float64 on the 2-core CPU) are computed once for the plain and the
    Ledoit-Wolf score.
    """
    with precision_lib.matmul_scope("highest"):
        centred = _centre(x, y, dim)
        return tuple(_map(centred, shrinkage=s) for s in shrinkages)


def from_matching(
    points: MappedPoints,
    perm: jax.Array,
    *,
    gap=0.0,
    converged=True,
    rtol: float = 1e-6,
) -> AffinityResult:
    """Steps 4-5 given a matching ``perm`` of ``points.t`` to ``points.y``.

    W2 is summed from the matched pairs; ``gap`` is the solver's certificate on
    the matching's total (0 for an exact solver). Traceable on JAX arrays; on
    numpy arrays (a host solver's points and matching, leading axes allowed) it
    runs in numpy, where these few array operations need no compiled kernel.
    """
    n = points.t.shape[-2]
    if isinstance(points.t, np.ndarray):
        w2 = costs.matched_cost(points.t, points.y, perm) / n
        gap = np.broadcast_to(np.asarray(gap, w2.dtype) / n, w2.shape)
        converged = np.broadcast_to(np.asarray(converged), w2.shape)
        with np.errstate(divide="ignore", invalid="ignore"):  # flagged below, as in JAX
            return _finish(points, w2, gap, converged, rtol, np)
    with precision_lib.matmul_scope("highest"):
        w2 = costs.matched_cost(points.t, points.y, perm) / n
    return _finish(points, w2, jnp.asarray(gap, w2.dtype) / n, jnp.asarray(converged), rtol)


def _affinity(x, y, *, shrinkage, solver, rtol, dim) -> AffinityResult:
    points = _mapped_points(x, y, shrinkage=shrinkage, dim=dim)
    return _solve(points, solver=solver, rtol=rtol)


def affinity_of_points(points: MappedPoints, *, solver: str = "auto", rtol: float = 1e-6):
    """Steps 4-5 of :func:`affinity` on :func:`mapped_points` output, in-graph (traceable)."""
    with precision_lib.matmul_scope("highest"):
        return _solve(points, solver=solver, rtol=rtol)


def _solve(points: MappedPoints, *, solver, rtol) -> AffinityResult:
    tc, yc, n = points.t, points.y, points.t.shape[0]
    if tc.shape[1] == 1:
        w2 = _sorted_w2(tc, yc)
        gap, converged = jnp.zeros_like(w2), jnp.asarray(True)
    elif assignment.resolve_solver(solver) == "host":
        _, total = host.host_matching(tc, yc)
        w2, gap, converged = total / n, jnp.zeros_like(total), jnp.isfinite(total)
    else:
        # The cost matrix only chooses the matching; its W2 is summed from the
        # matched pairs, so rounding in the expanded cost (a bfloat16 product
        # once made it 4.5 % high) cannot move the reported value. The gap is
        # the solver's certificate on the matrix it was given.
        res = assignment.solve(costs.sq_euclidean(tc, yc), solver=solver, rtol=rtol)
        w2, gap, converged = costs.matched_cost(tc, yc, res.perm) / n, res.gap / n, res.converged
    return _finish(points, w2, gap, converged, rtol)


def _finish(points: MappedPoints, w2, gap, converged, rtol, xp=jnp) -> AffinityResult:
    score = 1.0 - xp.sqrt(w2 / points.normaliser)
    ok = points.finite & converged
    score = xp.where(ok, score, xp.nan)
    w2 = xp.where(ok, w2, xp.nan)
    # A certificate means what it says: the auction's eps floor (64 ulps of the
    # cost scale) can end a float32 solve with gap above rtol * w2.
    certified = ok & (gap <= rtol * w2)
    return AffinityResult(
        score, w2, points.normaliser, gap, points.degenerate, points.finite, converged, certified
    )


def _span_coordinates(xc, yc):
    """Coordinates of centred samples in an orthonormal basis of their joint span, ``[n, k]`` each.

    The R factor of ``[xc; yc]^T = Q R`` holds them (``k = min(d, 2n)``), so the
    basis ``Q`` is never formed. Inputs come first: ``x``'s coordinates are zero
    past column ``n`` (R is upper triangular).
    """
    n = xc.shape[0]
    r = jnp.linalg.qr(jnp.concatenate([xc, yc], axis=0).T, mode="r")
    return r[:, :n].T, r[:, n:].T


class _Centred(NamedTuple):
    xc: jax.Array  # centred inputs, or their span coordinates
    yc: jax.Array
    finite: jax.Array
    n: int
    d: jax.Array | int  # true width (dim, or the array's)
    wide64: bool  # float64 with d > n: bures_transport on the span coordinates


def _centre(x, y, dim) -> _Centred:
    n, d_arr = x.shape
    d = d_arr if dim is None else dim
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
    # Keep NaN/Inf out of eigh and the solver; the result is flagged and set to NaN.
    x = jnp.where(finite, x, 0.0)
    y = jnp.where(finite, y, 0.0)
    mx, my = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    xc, yc = x - mx, y - my
    wide64 = d_arr > n and jnp.finfo(x.dtype).eps < 1e-15
    if d_arr > 2 * n or wide64:
        # Centred samples span at most 2n dimensions. Outside that span both
        # covariances are scalar (ridge, or the Ledoit-Wolf floor), so the Bures map
        # is a scalar there and never touches the centred data: work with the
        # samples' coordinates in an orthonormal basis of the span, which keeps
        # every distance. Above n, in float64, the inputs' coordinates fill only n
        # of them, which bures_transport exploits even when d <= 2n.
        xc, yc = _span_coordinates(xc, yc)
    return _Centred(xc, yc, finite, n, d, wide64)


def _mapped_points(x, y, *, shrinkage, dim) -> MappedPoints:
    return _map(_centre(x, y, dim), shrinkage=shrinkage)


def _map(c: _Centred, *, shrinkage) -> MappedPoints:
    xc, yc, finite, n, d, wide64 = c
    k = xc.shape[1]
    if shrinkage:
        (scale_x, floor_x), (scale_y, floor_y) = (
            covariance.ledoit_wolf_scale_floor(v, dim=d) for v in (xc, yc)
        )
    else:
        scale_x = scale_y = 1.0 / (n - 1)
        floor_x = floor_y = covariance.RIDGE
    # tr(Sy) over all d dimensions: the samples' part plus the floor everywhere.
    tr = scale_y * jnp.sum(yc * yc) + floor_y * d
    degenerate = tr <= DEGENERATE_TRACE * d
    if wide64:
        tc = matrix_square_root.bures_transport(xc[:, :n], yc, scale_x, floor_x, scale_y, floor_y)
        tc = jnp.where(degenerate, 0.0, tc)
        return MappedPoints(tc, yc, 2.0 * tr, degenerate, finite)
    eye = jnp.eye(k, dtype=xc.dtype)
    if jnp.finfo(xc.dtype).eps < 1e-15:
        sx = scale_x * covariance.gram(xc) + floor_x * eye
        sy = scale_y * covariance.gram(yc) + floor_y * eye
        a = matrix_square_root.bures_map(sx, sy)
    else:
        # float32: the Bures map from the samples' triangular factors, through an
        # SVD. The covariances and everything after the map lose nothing that
        # matters; the map's eigh of a squared-conditioned product lost up to
        # 7e-3 of the score on resnet18/densenet121 layers with d close to or
        # above n (benchmarks/float32_stages.py).
        r_x = covariance.triangular_factor(covariance.centered(xc), scale_x, floor_x)
        r_y = covariance.triangular_factor(covariance.centered(yc), scale_y, floor_y)
        a = matrix_square_root.bures_map_factored(r_x, r_y)
    a = jnp.where(degenerate, 0.0, a)
    tc = xc @ a  # mapped inputs, centred on my (the cost below then cancels less)
    return MappedPoints(tc, yc, 2.0 * tr, degenerate, finite)


@functools.partial(jax.jit, static_argnames=("shrinkage", "solver", "rtol"))
def _score_jit(x, y, *, shrinkage, solver, rtol):
    fn = functools.partial(affinity, shrinkage=shrinkage, solver=solver, rtol=rtol)
    for _ in range(x.ndim - 2):
        fn = jax.vmap(fn)
    return fn(x, y)


def affinity_score(
    x: jax.Array,
    y: jax.Array,
    *,
    shrinkage: bool = False,
    solver: str = "auto",
    dtype: str = "auto",
    rtol: float = 1e-6,
    precision: str | None = None,
) -> AffinityResult:
    r"""Affinity score of an activation with inputs ``x`` and outputs ``y``.

    .. math::
        \rho(x, y) = 1 - \sqrt{\frac{W_2^2(A(x - m_x) + m_y,\; y)}{2\,\mathrm{tr}\,\Sigma_y}}

    Args:
        x: inputs ``[..., n, d]`` (leading axes are batched with ``vmap``).
        y: outputs, same shape.
        shrinkage: use Ledoit–Wolf covariances (the reference's
            ``aff_score_corrected``) instead of the unbiased ones.
        solver: assignment backend, see :func:`affjax.solvers.assignment.solve`.
        dtype: ``"auto"`` (float64 unless on TPU), ``"float64"`` or
            ``"float32"``. float64 is scoped; global JAX settings are untouched.
            Matmuls run at ``Precision.HIGHEST`` in either.
        rtol: relative duality gap the auction solver must certify
            (``certified`` is False, not the score NaN, when it could not).
        precision: deprecated alias of ``dtype``.

    Returns:
        :class:`AffinityResult`. Non-finite inputs give ``score = NaN`` with
        ``finite = False``; an unconverged solver gives NaN with
        ``converged = False``. Never a silent number.

    Raises:
        ValueError: mismatched shapes, fewer than 2 samples, non-float input.
    """
    # No jnp conversion out here: outside the x64 scope it would round float64 to float32.
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    y = y if isinstance(y, jax.Array) else np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape [n, d], got {x.shape} and {y.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected [n, d] arrays (reshape 1-D data to [n, 1]), got {x.shape}")
    n, d = x.shape[-2:]
    if n < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got n={n}")
    if d < 1:
        raise ValueError("need at least one feature (d >= 1)")
    for name, a in (("x", x), ("y", y)):
        if not jnp.issubdtype(a.dtype, jnp.floating) and not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    dtype = precision_lib.dtype_argument(dtype, precision)
    solver = assignment.resolve_solver(solver)
    jdtype = precision_lib.dtype_of(dtype)
    with precision_lib.scope(dtype):
        return _score_jit(
            jnp.asarray(x, jdtype),
            jnp.asarray(y, jdtype),
            shrinkage=shrinkage,
            solver=solver,
            rtol=rtol,
        )
