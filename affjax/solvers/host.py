"""Exact assignment on the host CPU, callable from jitted and vmapped JAX code.

The compiled solver is scipy's ``linear_sum_assignment`` (shortest augmenting
path, Crouse 2016). ``benchmarks/bench_assignment.py`` compares it with POT's
network simplex (``ot.emd2``, ``numItermax=1e7``, the reference's solver),
``lap.lapjv`` and ``lapjv`` on the cost matrices the score actually solves.
``lap`` is 2-5x faster on well-separated costs but 4x slower than scipy on
near-ties; ``lapjv`` works in float32 (returned a cost 3e-7 above the optimum)
and took 44 s at n = 1024, d = 1; POT is 2-5x slower at d >= 64. scipy is exact
in float64 and never far from the fastest, so it is the one.

``scipy.optimize`` takes 0.5 s to import (most of it modules the solver never
uses), so it is imported at the first matching, not with affjax; a signature
starts the import in a thread (:func:`prefetch`) while its forward pass runs.
"""

from __future__ import annotations

import importlib
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

from affjax.math import costs

__all__ = ["host_assignment", "host_matching", "match_points", "prefetch"]

_SOLVER_MODULE = "scipy.optimize"


def _linear_sum_assignment():
    # Waits for a prefetch under way (the import lock), else imports now.
    return importlib.import_module(_SOLVER_MODULE).linear_sum_assignment


def prefetch() -> None:
    """Starts importing the solver in a daemon thread, if it is not imported yet.

    Call it before work that does not need the solver (a forward pass): the
    import then overlaps that work, and the first matching finds it done, or
    waits for it. Harmless if the import fails: the matching imports again and
    raises there.
    """
    if _SOLVER_MODULE not in sys.modules:
        threading.Thread(target=_quiet_import, name="affjax-import-scipy", daemon=True).start()


def _quiet_import() -> None:
    try:
        importlib.import_module(_SOLVER_MODULE)
    except Exception:  # noqa: BLE001 - reported by the matching that needs it
        pass


def _assign(cost: np.ndarray) -> np.ndarray:
    """Optimal permutation of one ``[n, n]`` cost; identity if it is not finite."""
    if not np.all(np.isfinite(cost)):  # the caller's total is NaN anyway
        return np.arange(cost.shape[0], dtype=np.int32)
    rows, cols = _linear_sum_assignment()(cost)
    perm = np.empty(cost.shape[0], dtype=np.int32)
    perm[rows] = cols
    return perm


def _solve_numpy(cost: np.ndarray) -> np.ndarray:
    cost = np.asarray(cost, dtype=np.float64)
    # pure_callback with vmap_method="expand_dims" hands us [..., n, n].
    flat = cost.reshape((-1,) + cost.shape[-2:])
    return np.stack([_assign(c) for c in flat]).reshape(cost.shape[:-1])


def host_assignment(cost: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Optimal assignment of a square cost matrix, solved on the host.

    Only the permutation crosses the host boundary (int32, the same whatever
    the x64 setting of the thread that runs the callback); the total is summed
    in-graph in ``cost.dtype``.

    Args:
        cost: ``[n, n]``; non-finite entries give a NaN total.

    Returns:
        ``(perm, total)``: ``perm`` ``[n]`` int32 with row ``i`` matched to
        column ``perm[i]``; ``total = sum_i cost[i, perm[i]]``.
    """
    shape = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    perm = jax.pure_callback(_solve_numpy, shape, cost, vmap_method="expand_dims")
    total = jnp.sum(jnp.take_along_axis(cost, perm[..., None], axis=-1)[..., 0], axis=-1)
    finite = jnp.all(jnp.isfinite(cost), axis=(-2, -1))
    return perm, jnp.where(finite, total, jnp.nan)


def match_points(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Optimal matchings of point clouds ``t``, ``y`` ``[..., n, d]`` under squared distance.

    Plain numpy (float64), for use outside a compiled graph: one
    ``linear_sum_assignment`` per cloud on its cost matrix, built here with the
    host BLAS; in one dimension the monotone matching (sorting), which is
    optimal for any convex cost.

    Returns:
        ``[..., n]`` int32 permutations, ``t_i`` matched to ``y_perm[i]``.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    flat_t = t.reshape((-1,) + t.shape[-2:])
    flat_y = y.reshape((-1,) + y.shape[-2:])
    perms = []
    for tb, yb in zip(flat_t, flat_y, strict=True):
        if tb.shape[-1] == 1 and np.all(np.isfinite(tb)) and np.all(np.isfinite(yb)):
            perm = np.empty(tb.shape[0], dtype=np.int32)
            perm[np.argsort(tb[:, 0], kind="stable")] = np.argsort(yb[:, 0], kind="stable")
            perms.append(perm)
            continue
        # Squared distances with the host BLAS, next to the solver: no n^2 floats
        # cross the device boundary.
        perms.append(_assign(costs.sq_euclidean(tb, yb)))
    return np.stack(perms).reshape(t.shape[:-1])


def host_matching(t: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Optimal matching of point clouds ``t``, ``y`` ``[n, d]`` under squared distance.

    The cost matrix is built on the host, next to the solver; the total is then
    summed in-graph from the points themselves, ``sum_i ||t_i - y_perm(i)||^2``,
    which is more accurate than reading it off the expanded cost matrix.

    Returns:
        ``(perm, total)`` as :func:`host_assignment`.
    """
    shape = jax.ShapeDtypeStruct(t.shape[:-1], jnp.int32)
    perm = jax.pure_callback(match_points, shape, t, y, vmap_method="expand_dims")
    total = costs.matched_cost(t, y, perm)
    finite = jnp.all(jnp.isfinite(t)) & jnp.all(jnp.isfinite(y))
    return perm, jnp.where(finite, total, jnp.nan)
