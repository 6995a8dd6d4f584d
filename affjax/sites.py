"""Which calls of a Flax model are scored: site predicates, function call sites, reductions.

A *site* is a module method call whose first positional argument ``x`` and
output ``y`` are compared by the affinity score. Sites are chosen by a
predicate of the form Flax's ``capture_intermediates`` filter takes,
``(module, method_name) -> bool``; :func:`selector` turns the shorthands
accepted by ``signature(..., sites=...)`` into one.

Function activations (``nn.relu(x)``) run in no module, so no predicate can
see them; :func:`site` wraps such a function into a call-site module:
``MyResNet(act=affjax.site(nn.relu))``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers

__all__ = [
    "DefaultSites",
    "Site",
    "SiteError",
    "SiteFunction",
    "feature_reduce",
    "generic_record",
    "selector",
    "site",
    "site_key",
]

Predicate = Callable[[nn.Module, str], bool]


class SiteError(ValueError):
    """A selected call that cannot be recorded, or a ``sites=`` value that means nothing."""


# --------------------------------------------------------------------------- reductions


def _rest_axes(x: jax.Array, feature_axis: int) -> tuple[int, ...]:
    """The axes :func:`feature_reduce` averages (every one but batch and ``feature_axis``)."""
    if x.ndim == 0:
        raise SiteError("a scalar has no batch axis")
    if x.ndim == 1:
        return ()
    if not -x.ndim <= feature_axis < x.ndim:
        raise SiteError(f"feature_axis {feature_axis} is out of range for a {x.ndim}-D array")
    axis = feature_axis % x.ndim
    if axis == 0:
        raise SiteError("feature_axis must not be the batch axis (0)")
    return tuple(i for i in range(1, x.ndim) if i != axis)


def feature_reduce(x: jax.Array, feature_axis: int = -1) -> jax.Array:
    """``[n, ...]`` -> ``[n, d]``: mean over every axis but batch (0) and ``feature_axis``.

    NHWC images keep channels, ``[n, L, D]`` tokens keep ``D`` (mean over
    tokens), ``[n, d]`` rows are kept as they are, ``[n]`` becomes ``[n, 1]``.
    Half-precision activations are averaged in float32.
    """
    rest = _rest_axes(x, feature_axis)
    if x.dtype in (jnp.bfloat16, jnp.float16):
        x = x.astype(jnp.float32)
    if x.ndim == 1:
        return x[:, None]
    return jnp.mean(x, axis=rest) if rest else x


def generic_record(x: jax.Array, y: jax.Array, feature_axis: int = -1) -> dict:
    """What a generic site records: reduced ``x``/``y`` and per-sample sparsity.

    When ``x`` and ``y`` have one shape and something to average, in one pass
    (:func:`affjax.models.layers.reduce_record`).
    """
    if x.shape == y.shape:
        rest = _rest_axes(x, feature_axis)
        if rest:
            return layers.reduce_record(x, y, rest)
    return {
        "x": feature_reduce(x, feature_axis),
        "y": feature_reduce(y, feature_axis),
        "sparsity_x": layers._per_sample_sparsity(x),
        "sparsity_y": layers._per_sample_sparsity(y),
    }


# --------------------------------------------------------------------------- function sites


class Site(layers.Activation):
    """A call site around any function: ``y = fn(x)``, recorded along ``feature_axis``.

    Made by :func:`site`; unlike the torch-faithful
    :class:`~affjax.models.layers.Activation` it uses the generic reduction
    (:func:`feature_reduce`) and is keyed by its Flax path.
    """

    feature_axis: int = -1

    @nn.nowrap
    def record(self, x: jax.Array, y: jax.Array) -> dict:
        return generic_record(x, y, self.feature_axis)


@functools.cache
def _site_class(name: str) -> type[Site]:
    # Flax autonames a submodule after its class ("relu_0", "relu_1"...), so a
    # subclass per function name gives readable keys. Cached: one class per name.
    return type(name, (Site,), {"__module__": __name__, "__qualname__": name})


def _function_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", type(fn).__name__)
    return re.sub(r"\W", "_", name) or "site"


@dataclasses.dataclass(frozen=True)
class SiteFunction:
    """``fn`` that becomes a :class:`Site` submodule when called in a compact method."""

    fn: Callable[[jax.Array], jax.Array]
    kind: str
    feature_axis: int = -1

    def __call__(self, x: jax.Array) -> jax.Array:
        if nn.module._context.module_stack[-1] is None:
            return self.fn(x)  # outside any Flax module: just the function
        return _site_class(self.kind)(kind=self.kind, fn=self.fn, feature_axis=self.feature_axis)(x)


def site(
    fn: Callable[[jax.Array], jax.Array], kind: str | None = None, *, feature_axis: int = -1
) -> SiteFunction:
    """Makes a function activation a call site: ``MyResNet(act=affjax.site(nn.relu))``.

    Called inside a Flax ``@nn.compact`` method, the result creates a
    :class:`Site` submodule (auto-named after ``kind``: ``relu_0``, ``relu_1``...)
    that applies ``fn`` and is recorded by :func:`affjax.signature` with its
    default ``sites``. Outside a module it is just ``fn``. In a ``setup``-style
    module, assign ``self.act = Site(fn=fn, kind="relu")`` in ``setup`` instead.

    Args:
        fn: ``[n, ...] -> [n, ...]``, e.g. ``nn.relu`` or ``partial(nn.gelu, approximate=False)``.
        kind: the ``kind`` column of the records and the submodules' name
            prefix; default: the function's name.
        feature_axis: the axis kept when reducing to ``[n, d]`` (default last).
    """
    return SiteFunction(fn, kind or _function_name(fn), feature_axis)


# --------------------------------------------------------------------------- keys


def flax_key(path: Sequence[str], method: str = "__call__", root: str = "") -> str:
    """A generic site's key: its Flax path ``"block_0/mlp"`` (``":method"`` unless ``__call__``)."""
    key = "/".join(path) or root
    return key if method == "__call__" else f"{key}:{method}"


def site_key(module: nn.Module, method: str = "__call__") -> tuple[str, str, bool]:
    """``(key, kind, functional)`` of a bound module's call.

    Our torch-faithful :class:`~affjax.models.layers.Activation` sites keep the
    reference's keys (``layer1.0.relu_ReLU``); every other site, :class:`Site`
    included, is keyed by its Flax path, untouched.
    """
    from affjax.capture import reference_key  # capture imports this module

    path = tuple(module.path)
    if isinstance(module, Site):
        return flax_key(path, method, type(module).__name__), module.kind, False
    if isinstance(module, layers.Activation) and method == "__call__":
        return reference_key(path, module.kind, module.functional), module.kind, module.functional
    return flax_key(path, method, type(module).__name__), type(module).__name__, False


# --------------------------------------------------------------------------- predicates


@dataclasses.dataclass(frozen=True)
class DefaultSites:
    """Our call sites: :class:`~affjax.models.layers.Activation` (and :class:`Site`) calls."""

    def __call__(self, module: nn.Module, method: str) -> bool:
        return method == "__call__" and isinstance(module, layers.Activation)


@dataclasses.dataclass(frozen=True)
class _ClassName:
    name: str

    def __call__(self, module: nn.Module, method: str) -> bool:
        if method != "__call__":
            return False
        if any(c.__name__ == self.name for c in type(module).__mro__):
            return True
        if "/".join(module.path) == self.name:
            return True
        # our call sites also answer to their kind: "ReLU", "GELU", "relu"
        return isinstance(module, layers.Activation) and module.kind == self.name


@dataclasses.dataclass(frozen=True)
class _PathGlob:
    pattern: str

    def __call__(self, module: nn.Module, method: str) -> bool:
        return method == "__call__" and fnmatch.fnmatchcase("/".join(module.path), self.pattern)


@dataclasses.dataclass(frozen=True)
class _ClassType:
    cls: type

    def __call__(self, module: nn.Module, method: str) -> bool:
        return method == "__call__" and isinstance(module, self.cls)


@dataclasses.dataclass(frozen=True)
class _Any:
    predicates: tuple[Predicate, ...]

    def __call__(self, module: nn.Module, method: str) -> bool:
        return any(p(module, method) for p in self.predicates)


_GLOB = re.compile(r"[*?\[/]")


def selector(sites: Any = None) -> Predicate:
    """One predicate ``(module, method_name) -> bool`` from any accepted ``sites=`` form.

    * ``None``: our call sites (:class:`~affjax.models.layers.Activation`,
      :func:`site`).
    * a callable ``(module, method_name) -> bool``, as Flax's
      ``capture_intermediates`` takes; used as is (any method can be selected).
    * a name, ``"MLPBlock"``: modules of that class or a subclass, our call
      sites of that kind (``"ReLU"``, ``"gelu"``), or the module at that exact
      Flax path (``"layer1_0"``).
    * a path glob (has ``*?[`` or ``/``), ``"*/mlp*"``: matched against the
      module's Flax path ``"block_0/mlp"`` with :func:`fnmatch.fnmatchcase`.
    * a Module subclass, or a tuple/list of any of these (their union).

    Shorthands select ``__call__`` only. Predicates are hashable (frozen
    dataclasses), so equal selections reuse one compiled forward.
    """
    if sites is None:
        return DefaultSites()
    if isinstance(sites, str):
        if not sites:
            raise SiteError("sites='' selects nothing; give a class name or a path glob")
        return _PathGlob(sites) if _GLOB.search(sites) else _ClassName(sites)
    if isinstance(sites, type):
        if not issubclass(sites, nn.Module):
            raise SiteError(f"sites={sites.__name__} is not a flax.linen.Module subclass")
        return _ClassType(sites)
    if isinstance(sites, (tuple, list)):
        if not sites:
            raise SiteError("sites=() selects nothing")
        return _Any(tuple(selector(s) for s in sites))
    if callable(sites):
        return sites
    raise SiteError(
        f"sites={sites!r}: expected a predicate (module, method_name) -> bool, a class name, "
        "a path glob, or a tuple of these"
    )
