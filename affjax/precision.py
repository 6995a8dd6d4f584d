"""Numerical precision, chosen explicitly and never inherited.

Two separate choices:

* the **dtype** of the score math (``dtype="auto" | "float64" | "float32"``).
  float64 runs inside the scoped ``jax.enable_x64`` context instead of
  ``jax.config.update("jax_enable_x64", True)`` at import time, which would
  change every other JAX program in the process;
* the **matmul precision** (JAX's ``precision``: how many passes a float32
  ``dot_general``/conv takes). Accelerators default to fewer passes than
  float32 needs: one bfloat16 pass on TPU, TF32 for convolutions on NVIDIA
  GPUs. The score math always runs at ``HIGHEST``; the model forward takes
  ``forward_precision="highest"`` (default) or ``"default"`` (the platform's).

``precision=`` used to select the dtype; it is a deprecated alias of
``dtype=`` for one release, since the name means matmul passes in JAX.
"""

from __future__ import annotations

import contextlib
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "DTYPES",
    "bf16_inputs",
    "bf16_kernels",
    "FORWARD_PRECISIONS",
    "PRECISIONS",
    "dtype_argument",
    "dtype_of",
    "matmul_scope",
    "resolve",
    "scope",
]

DTYPES = ("auto", "float64", "float32")
#: Deprecated name of :data:`DTYPES`.
PRECISIONS = DTYPES
FORWARD_PRECISIONS = ("highest", "default")


def resolve(dtype: str) -> str:
    """``"auto"`` means float64, except on TPU where float64 is emulated and slow."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    if dtype == "auto":
        return "float32" if jax.default_backend() == "tpu" else "float64"
    return dtype


def dtype_of(dtype: str):
    return jnp.float64 if resolve(dtype) == "float64" else jnp.float32


def scope(dtype: str) -> contextlib.AbstractContextManager:
    """Context in which arrays of ``dtype`` can be created (scoped x64)."""
    if resolve(dtype) == "float64":
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def dtype_argument(dtype: str, precision: str | None, *, stacklevel: int = 3) -> str:
    """``dtype``, or the deprecated ``precision=`` alias with a DeprecationWarning."""
    if precision is None:
        return dtype
    warnings.warn(
        "precision= selects the dtype and is deprecated; use dtype= "
        "(in JAX, precision means matmul passes)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if dtype not in ("auto", precision):
        raise ValueError(f"dtype={dtype!r} and precision={precision!r} disagree; give dtype only")
    return precision


def matmul_scope(precision: str) -> contextlib.AbstractContextManager:
    """Trace-time context that sets the precision of every matmul and conv traced in it.

    ``"highest"``: ``jax.default_matmul_precision("highest")``, which JAX
    records on each ``dot_general``/``conv_general_dilated`` of the traced
    program, whatever the platform or the caller's default. ``"default"``:
    the caller's setting is left alone.
    """
    if precision not in FORWARD_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {FORWARD_PRECISIONS}")
    if precision == "highest":
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def _to_bf16(a):
    return a.astype(jnp.bfloat16).astype(a.dtype)


def bf16_kernels(variables: dict) -> dict:
    """``variables`` with every ``kernel`` (conv and dense weights) rounded to bfloat16.

    With :func:`bf16_inputs`, emulates on any backend what a TPU's default
    matmul precision does to a float32 forward: one bfloat16 pass, i.e. both
    operands rounded to bfloat16, products accumulated in float32.
    """

    def leaf(path, a):
        name = getattr(path[-1], "key", None)
        return _to_bf16(a) if name == "kernel" else a

    return jax.tree_util.tree_map_with_path(leaf, variables)


@contextlib.contextmanager
def bf16_inputs():
    """While tracing inside, every ``nn.Conv``/``nn.Dense`` input is rounded to bfloat16.

    The other half of the emulation (see :func:`bf16_kernels`). It acts at
    trace time: clear the cache of a jitted forward traced outside it.
    """

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
            args = (_to_bf16(args[0]), *args[1:])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield
