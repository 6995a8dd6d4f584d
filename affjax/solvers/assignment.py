"""Exact linear assignment for the W2 step, behind one function.

``solver="auto"`` picks the host solver (scipy, through ``jax.pure_callback``)
on the CPU backend and the JAX auction on accelerators, where a round trip to
the host and a serial CPU solve would dominate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from affjax.solvers import auction as auction_lib
from affjax.solvers import host

__all__ = ["SOLVERS", "AssignmentResult", "resolve_solver", "solve"]

SOLVERS = ("auto", "host", "auction")


class AssignmentResult(NamedTuple):
    """Optimal matching of a square cost matrix."""

    perm: jax.Array  # [n] int32: row i -> column perm[i]
    total: jax.Array  # sum_i cost[i, perm[i]]
    gap: jax.Array  # certified bound: total - optimum <= gap (0 for exact solvers)
    converged: jax.Array  # bool


def resolve_solver(solver: str) -> str:
    """Maps ``"auto"`` to a concrete backend for the default JAX device."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "auto":
        return "host" if jax.default_backend() == "cpu" else "auction"
    return solver


def solve(cost: jax.Array, *, solver: str = "auto", rtol: float = 1e-6) -> AssignmentResult:
    """Minimum-cost perfect matching of ``cost`` ``[n, n]``.

    Args:
        cost: square cost matrix.
        solver: ``"auto"``, ``"host"`` (scipy, exact) or ``"auction"`` (JAX,
            epsilon-scaling auction with a duality-gap certificate).
        rtol: relative duality gap at which the auction stops.

    Returns:
        :class:`AssignmentResult`.
    """
    solver = resolve_solver(solver)
    if solver == "host":
        perm, total = host.host_assignment(cost)
        return AssignmentResult(perm, total, jnp.zeros_like(total), jnp.isfinite(total))
    res = auction_lib.auction(cost, rtol=rtol)
    return AssignmentResult(res.perm, res.primal, res.gap, res.converged)
