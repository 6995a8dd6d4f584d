"""Numerical precision without touching JAX's global configuration.

affjax computes in float64 by default wherever the backend has it. Instead of
``jax.config.update("jax_enable_x64", True)`` at import time (which would change
every other JAX program in the process), the float64 parts run inside the
scoped ``jax.enable_x64`` context.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

__all__ = ["PRECISIONS", "dtype_of", "resolve", "scope"]

PRECISIONS = ("auto", "float64", "float32")


def resolve(precision: str) -> str:
    """``"auto"`` means float64, except on TPU where float64 is emulated and slow."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "float32" if jax.default_backend() == "tpu" else "float64"
    return precision


def dtype_of(precision: str):
    return jnp.float64 if resolve(precision) == "float64" else jnp.float32


def scope(precision: str) -> contextlib.AbstractContextManager:
    """Context in which arrays of ``precision`` can be created (scoped x64)."""
    if resolve(precision) == "float64":
        return jax.enable_x64(True)
    return contextlib.nullcontext()
