"""Side metrics the published reference records next to the affinity score.

All are pure functions of reduced ``[n, d]`` features (``sparsity`` of any
tensor) and can be ``jit``-ed and ``vmap``-ed. Names follow the reference's
output columns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from affjax.math import covariance

__all__ = [
    "R2_CLEARANCE",
    "R2_RCOND",
    "SPARSITY_THRESHOLD",
    "cka",
    "entropy",
    "norm_diff",
    "r2",
    "r2_with_clearance",
    "sparsity",
]

#: Entries with ``|v| <= SPARSITY_THRESHOLD`` count as zero (reference value).
SPARSITY_THRESHOLD = 1e-3


def cka(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Linear centred kernel alignment of ``x`` ``[n, d]`` and ``y`` ``[n, e]``.

    .. math::
        \mathrm{CKA} = \frac{\|\bar X^\top \bar Y\|_F^2}
                            {\|\bar X^\top \bar X\|_F\,\|\bar Y^\top \bar Y\|_F}

    equal to the reference's HSIC form with centred Gram matrices; the
    feature form costs :math:`O(n d^2)` instead of :math:`O(n^2 d)`, the Gram
    form is used when ``d > n``.
    """
    xc, yc = covariance.centered(x), covariance.centered(y)
    if max(x.shape[1], y.shape[1]) > x.shape[0]:
        kx, ky = xc @ xc.T, yc @ yc.T
        hxy, hxx, hyy = jnp.sum(kx * ky), jnp.sum(kx * kx), jnp.sum(ky * ky)
    else:
        hxy = jnp.sum((xc.T @ yc) ** 2)
        hxx = jnp.sum((xc.T @ xc) ** 2)
        hyy = jnp.sum((yc.T @ yc) ** 2)
    return hxy / jnp.sqrt(hxx * hyy)


def _histogram_rows(x: jax.Array, dim=None) -> jax.Array:
    """Per-row ``torch.histc(row, bins=d, min=row.min(), max=row.max())``.

    With ``dim`` (may be traced), only the first ``dim`` columns are data and
    there are ``dim`` bins; the rest is padding.
    """
    n, d_arr = x.shape
    d = d_arr if dim is None else dim
    valid = jnp.arange(d_arr) < d
    lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=1, keepdims=True)
    hi = jnp.max(jnp.where(valid, x, -jnp.inf), axis=1, keepdims=True)
    # torch.histc widens an empty range to [v - 1, v + 1].
    flat = lo == hi
    lo, hi = jnp.where(flat, lo - 1, lo), jnp.where(flat, hi + 1, hi)
    # Same arithmetic as torch's CPU kernel: (v - lo) * bins / (hi - lo), truncated,
    # the right edge falling into the last bin.
    idx = ((x - lo) * jnp.asarray(d, x.dtype) / (hi - lo)).astype(jnp.int32)
    idx = jnp.clip(idx, 0, d - 1)
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, d_arr))
    weight = jnp.broadcast_to(valid, (n, d_arr)).astype(x.dtype)
    return jnp.zeros((n, d_arr), x.dtype).at[rows, idx].add(weight)


def entropy(x: jax.Array, dim=None) -> jax.Array:
    r"""Mean over samples of the histogram entropy of each sample's ``d`` values.

    Each row is binned into ``d`` bins between its min and max;
    :math:`H = -\sum_k p_k \log p_k + \log d`, averaged over rows. ``dim``:
    true width of zero-padded rows (see :func:`affjax.score.affinity_score`).
    """
    d = x.shape[1] if dim is None else dim
    counts = _histogram_rows(x, dim)
    p = counts / jnp.sum(counts, axis=1, keepdims=True)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.mean(-jnp.sum(plogp, axis=1) + jnp.log(jnp.asarray(d, x.dtype)))


def sparsity(x: jax.Array) -> jax.Array:
    """Fraction of entries with ``|v| <= 1e-3`` (the reference's ``1 - nnz / numel``)."""
    return jnp.mean((jnp.abs(x) <= SPARSITY_THRESHOLD).astype(jnp.float32))


def norm_diff(x: jax.Array, y: jax.Array) -> jax.Array:
    """Frobenius norm of ``x - y``."""
    return jnp.sqrt(jnp.sum((x - y) ** 2))


#: Relative singular-value cutoff of the least-squares fit in :func:`r2`:
#: scikit-learn's ``LinearRegression(tol=1e-6)`` passes it to ``scipy.linalg.lstsq``
#: as ``cond`` (since scikit-learn 1.7, the version the reference runs with here).
R2_RCOND = 1e-6


#: A fit's rank decision is trusted when every singular value of the centred inputs
#: is at least this factor above or below the cutoff ``rcond * s_max``
#: (:func:`r2_with_clearance`; the signature records r2 as ill-posed otherwise).
R2_CLEARANCE = 100.0


def r2(x: jax.Array, y: jax.Array, rcond: float = R2_RCOND, dim=None) -> jax.Array:
    r""":math:`R^2` of the least-squares fit of ``y`` on ``x`` with intercept.

    As ``LinearRegression().fit(x, y).score(x, y)``: the fit is the projection
    of the centred ``y`` on the column space of the centred ``x`` (minimum-norm
    least squares with singular values below ``rcond * s_max`` dropped, so
    ``d >= n`` fits exactly); :math:`R^2` is averaged
    uniformly over outputs, with scikit-learn's conventions for constant
    outputs (1 if also perfectly predicted, else 0). ``dim``: true width of
    zero-padded ``x`` and ``y`` (padded outputs are left out of the average).
    """
    return r2_with_clearance(x, y, rcond, dim)[0]


def r2_with_clearance(
    x: jax.Array, y: jax.Array, rcond: float = R2_RCOND, dim=None
) -> tuple[jax.Array, jax.Array]:
    r""":func:`r2`, and how far the singular values of the centred ``x`` are from its cutoff.

    The clearance is :math:`\min_i \max(s_i / c, c / s_i) \ge 1` over the singular
    values :math:`s_i`, with :math:`c = \text{rcond}\, s_{\max}` the cutoff (``inf``
    when every :math:`s_i` is 0). Below
    :data:`R2_CLEARANCE`, which directions the fit keeps depends on round-off in
    ``x``: the 128 features of DenseNet-121's first ``relu2`` are a linear map of
    64 channels, so half their singular values are float32 round-off at
    5e-7-1e-6 of the largest, on the cutoff, and the fit's :math:`R^2` moved from
    0.82 to 0.73 as the cutoff went from 1e-7 to 1e-5.
    """
    xc, yc = covariance.centered(x), covariance.centered(y)
    u, s, _ = jnp.linalg.svd(xc, full_matrices=False)
    # Directions below rcond * s_max are treated as rank deficiency, as lstsq does.
    cut = max(rcond, jnp.finfo(x.dtype).eps * max(x.shape)) * s[0]
    keep = s > cut
    ratio = jnp.where(keep, s / cut, cut / s)  # 0 / 0 (all s zero) -> NaN -> no decision
    clearance = jnp.min(jnp.where(jnp.isnan(ratio), jnp.inf, ratio))
    u = u * keep
    resid = yc - u @ (u.T @ yc)
    num = jnp.sum(resid**2, axis=0)
    den = jnp.sum(yc**2, axis=0)
    score = jnp.where(den != 0, 1.0 - num / jnp.where(den != 0, den, 1.0), 0.0)
    score = jnp.where((den == 0) & (num == 0), 1.0, score)
    if dim is None:
        return jnp.mean(score), clearance
    valid = jnp.arange(y.shape[1]) < dim
    return jnp.sum(jnp.where(valid, score, 0.0)) / dim, clearance
