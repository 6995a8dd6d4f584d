"""Exact solvers for the assignment (discrete W2) step."""

from affjax.solvers import assignment

__all__ = ["assignment"]
