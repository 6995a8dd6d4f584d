"""XLA compiler options for affjax's own compiled functions, and the ``jit`` that applies them.

On the CPU, jaxlib 0.10 hands convolutions (and some element-wise and
reduction fusions) to the YNNPACK library by default. On the project machine
(AMD EPYC, 2 cores) that made the jitted resnet18 forward at batch 256 take
8.9 s instead of 5.5 s with XLA's own kernels, the same logits to float32
round-off (``benchmarks/bench_cpu_options.py`` measures it on yours). So the
model forward passes affjax compiles (:mod:`affjax.capture`) use
:data:`CPU_OPTIONS` when they compile for the CPU. The score kernels keep XLA's
defaults: they hold no convolution, the options did not change their time
measurably, and they moved float64 results by an ulp (``jax.jit`` of the public
score would then differ from the score in the last bit).

* per function (``jax.jit(..., compiler_options=...)``), never through
  ``XLA_FLAGS``: your own jitted code keeps XLA's defaults;
* only when the installed jaxlib knows the option (checked once with a tiny
  compile), so other jaxlib versions compile as they always did;
* not when ``XLA_FLAGS`` already sets the option (yours wins), nor with
  ``AFFJAX_CPU_OPTIONS=off``.

GPU and TPU compiles get no options. The options are part of JAX's
persistent-cache key, so cached executables stay consistent.

**Host BLAS threads while scoring on the CPU** (:func:`scoring_threads`). The
score's LAPACK calls inside XLA (``eigh``, Cholesky: jaxlib takes them from
scipy's OpenBLAS) and the host matching's cost matrices (numpy's OpenBLAS) run
next to XLA's own thread pool. OpenBLAS threads keep spinning after a call and
take the cores XLA's next operation needs: on 2 cores a DenseNet-121 call at
n = 256, d = 128 took 20-39 ms with OpenBLAS's default threads and 9 ms with
one (d = 512: 147 against 110 ms). So :func:`affjax.signature.score_calls`
limits OpenBLAS to one thread (``threadpoolctl``) while it scores on the CPU
and restores your setting after. ``AFFJAX_CPU_OPTIONS=off`` leaves it alone.
"""

from __future__ import annotations

import contextlib
import functools
import os

import jax

from affjax import switches

__all__ = ["CPU_OPTIONS", "compiler_options", "jit", "scoring_threads"]

#: XLA:CPU debug options affjax compiles with (empty list: no YNNPACK fusions).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _supported(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler accepts ``options`` (one tiny compile)."""
    try:
        jax.jit(lambda v: v + 1, compiler_options=dict(options)).lower(1.0).compile()
    except Exception:  # unknown option (another jaxlib): compile as JAX does by default
        return False
    return True


def _cpu_tuning(backend: str | None) -> bool:
    if not switches.switch("AFFJAX_CPU_OPTIONS", True):
        return False
    return (backend or jax.default_backend()) == "cpu"


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options affjax compiles with on ``backend`` (default: JAX's default backend)."""
    if not _cpu_tuning(backend):
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in CPU_OPTIONS.items() if k not in flags}
    if not options or not _supported(tuple(sorted(options.items()))):
        return {}
    return options


class _Jit:
    """``jax.jit(fn, **kwargs)`` created at its first use, with :func:`compiler_options`.

    Deferred so that importing affjax neither initialises a backend nor fixes
    the options before the user has chosen a platform. Called inside another
    trace (``jit``, ``shard_map``, ``make_jaxpr``), it is a plain nested jit:
    JAX takes compiler options only at the top level, where the outer
    function's apply. Everything else (``lower``, ``clear_cache``...) is the
    top-level jitted function's.
    """

    def __init__(self, fn, kwargs):
        functools.update_wrapper(self, fn)
        self._kwargs = kwargs
        self._top = None
        self._nested = jax.jit(fn, **kwargs)

    def _get(self):
        if self._top is None:
            options = compiler_options()
            self._top = (
                jax.jit(self.__wrapped__, compiler_options=options, **self._kwargs)
                if options
                else self._nested
            )
        return self._top

    def __call__(self, *args, **kwargs):
        top = self._get()
        if top is self._nested:
            return top(*args, **kwargs)
        try:
            return top(*args, **kwargs)
        except ValueError as err:
            # Raised before anything is traced; checking the arguments for tracers
            # instead cost 1-2 ms a call (a model's variables are a large pytree).
            if "compiler_options" not in str(err):
                raise
        return self._nested(*args, **kwargs)

    def clear_cache(self):
        self._nested.clear_cache()
        if self._top is not None:
            self._top.clear_cache()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def jit(fn=None, **kwargs):
    """``jax.jit`` with :func:`compiler_options`; a decorator too: ``@jit(static_argnames=...)``."""
    if fn is None:
        return functools.partial(jit, **kwargs)
    return _Jit(fn, kwargs)


def scoring_threads(backend: str | None = None) -> contextlib.AbstractContextManager:
    """Context for scoring on ``backend``: on the CPU, host BLAS limited to one thread.

    See the module docstring. Elsewhere (and with ``AFFJAX_CPU_OPTIONS=off``) a
    no-op: on an accelerator the host BLAS only builds cost matrices, which its
    threads speed up.
    """
    if not _cpu_tuning(backend):
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # ~20 ms to import: only when scoring

    return threadpool_limits(limits=1, user_api="blas")
