"""Square roots of symmetric PSD matrices and the Bures (Gaussian OT) map."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["PsdRoots", "bures_map", "roots"]


class PsdRoots(NamedTuple):
    """Square root and pseudo-inverse square root of a PSD matrix."""

    sqrt: jnp.ndarray  # [d, d]
    inv_sqrt: jnp.ndarray  # [d, d], pseudo-inverse of ``sqrt``


def roots(a: jnp.ndarray) -> PsdRoots:
    r"""PSD square root and its pseudo-inverse through one ``eigh``.

    Negative eigenvalues (round-off on a PSD matrix) are clipped to zero. The
    pseudo-inverse drops square roots below ``rcond * max`` with torch's
    ``pinverse`` default ``rcond = 1e-15`` in float64 (what the reference
    applies to the same matrix), ``d * eps`` in lower precision.

    Args:
        a: symmetric ``[d, d]``.

    Returns:
        :class:`PsdRoots` with :math:`a^{1/2}` and :math:`(a^{1/2})^{+}`.
    """
    a = 0.5 * (a + a.T)  # eigh reads one triangle; make the input exactly symmetric
    w, v = jnp.linalg.eigh(a)
    w = jnp.maximum(w, 0.0)
    s = jnp.sqrt(w)
    eps = jnp.finfo(a.dtype).eps
    rcond = 1e-15 if eps < 1e-15 else a.shape[-1] * eps
    cutoff = rcond * jnp.max(s)
    keep = s > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    return PsdRoots(sqrt=(v * s) @ v.T, inv_sqrt=(v * inv) @ v.T)


def bures_map(cov_x: jnp.ndarray, cov_y: jnp.ndarray) -> jnp.ndarray:
    r"""Linear part of the optimal-transport map between centred Gaussians.

    The map sends :math:`N(0, \Sigma_x)` to :math:`N(0, \Sigma_y)`:

    .. math::
        A = \Sigma_y^{1/2}\,\big(\Sigma_y^{1/2} \Sigma_x \Sigma_y^{1/2}\big)^{-1/2}\,\Sigma_y^{1/2}

    with PSD roots from :func:`roots` (the inner inverse is a pseudo-inverse).
    :math:`A` is symmetric PSD and :math:`A \Sigma_x A = \Sigma_y` when
    :math:`\Sigma_x` is invertible.

    Args:
        cov_x: ``[d, d]`` input covariance.
        cov_y: ``[d, d]`` output covariance.

    Returns:
        ``[d, d]`` map :math:`A`.
    """
    sy = roots(cov_y).sqrt
    inner = roots(sy @ cov_x @ sy).inv_sqrt
    a = sy @ inner @ sy
    return 0.5 * (a + a.T)
