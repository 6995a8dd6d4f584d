r"""The squared Euclidean cost of the W2 step, in one place.

The assignment solvers need the ``[n, n]`` matrix
:math:`C_{ij} = \|t_i - y_j\|^2`, built in its expanded form
:math:`\|t_i\|^2 + \|y_j\|^2 - 2\,t_i \cdot y_j` (one matrix product). The
expansion cancels: an entry is off by about :math:`\epsilon (\|t_i\|^2 +
\|y_j\|^2)`, and by far more when the product runs at a reduced matmul
precision (a bfloat16 pass on TPU). So the matrix only *chooses* a matching;
the W2 of that matching is then summed from the matched point pairs
(:func:`matched_cost`), whose error does not depend on the cost matrix at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["matched_cost", "sq_euclidean"]


def sq_euclidean(t, y):
    r"""Squared distances :math:`\|t_i - y_j\|^2` of ``[n, d]`` and ``[m, d]`` points.

    .. math::
        C_{ij} = \|t_i\|^2 + \|y_j\|^2 - 2\, t_i \cdot y_j, \quad \text{clipped at } 0.

    Works on numpy arrays (host BLAS, one ``[n, m]`` buffer built in place,
    15-40 % faster than out of place at n = 2048, d = 512 and 64) and on JAX
    arrays (the product at ``Precision.HIGHEST``, whatever the platform's
    default matmul precision).

    Returns:
        ``[n, m]`` costs in the input's dtype.
    """
    if isinstance(t, np.ndarray):
        cost = (-2.0 * t) @ y.T  # scaling by -2 is exact
        cost += np.einsum("ij,ij->i", t, t)[:, None]
        cost += np.einsum("ij,ij->i", y, y)[None]
        return np.maximum(cost, 0.0, out=cost)
    cross = jnp.matmul(t, y.T, precision=lax.Precision.HIGHEST)
    sq_t = jnp.sum(t * t, axis=1)
    sq_y = jnp.sum(y * y, axis=1)
    return jnp.maximum(sq_t[:, None] + sq_y[None, :] - 2.0 * cross, 0.0)


def matched_cost(t: jax.Array, y: jax.Array, perm: jax.Array) -> jax.Array:
    r""":math:`\sum_i \|t_i - y_{\pi(i)}\|^2` of a matching, from the points themselves.

    Args:
        t: ``[..., n, d]`` points.
        y: ``[..., n, d]`` points.
        perm: ``[..., n]`` int, ``t_i`` matched to ``y_perm[i]``.

    Returns:
        ``[...]`` total squared distance of the matched pairs, numpy for numpy inputs.
    """
    xp = np if isinstance(t, np.ndarray) else jnp
    matched = xp.take_along_axis(y, perm[..., None], axis=-2)
    return xp.sum((t - matched) ** 2, axis=(-2, -1))
