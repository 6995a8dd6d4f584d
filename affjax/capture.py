"""Capture of activation calls through Flax's ``sow`` mechanism.

:class:`affjax.models.layers.Activation` sows reduced features into the
``"affinity"`` collection. This module runs a model with that collection
mutable, in chunks of the batch, and returns the calls in execution order
with the reference's keys (``f"{dotted_path}_{ClassName}"``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import layers, registry

__all__ = ["Call", "call_order", "capture", "reference_key"]


class Call(NamedTuple):
    """One activation call with what it saw (reduced to ``[n, d]``)."""

    key: str  # reference key, e.g. "layer1.0.relu_ReLU"; functional: "path:F.relu"
    call: int  # 0.. for modules called several times
    kind: str  # torch class name
    functional: bool
    flax_path: tuple[str, ...]
    x: np.ndarray  # [n, d] reduced input, reference reduction
    y: np.ndarray  # [n, d] reduced output
    x_channels: np.ndarray | None  # [n, c] when the channel reduction differs
    y_channels: np.ndarray | None
    sparsity_x: float  # fraction of |v| <= 1e-3 in the unreduced input
    sparsity_y: float


def reference_key(flax_path: tuple[str, ...], kind: str, functional: bool) -> str:
    """The reference's key for a call site; functional sites get a distinct form."""
    path = registry.torch_path(flax_path)
    # ':' never occurs in torch module names, so these can't collide with reference keys.
    return f"{path}:F.{kind.lower()}" if functional else f"{path}_{kind}"


def call_order(module: nn.Module, image_shape: tuple[int, ...]):
    """Execution order of the activation calls: ``[(flax_path, kind, functional), ...]``.

    Traced abstractly (``jax.eval_shape`` of ``init``, so no variables are
    needed) with a Flax method interceptor: ``sow`` collections are nested by
    module, which loses the interleaving of repeated calls (a ResNet block's
    single ``relu`` runs between other sites). Cached per module and image size,
    so a multi-batch run traces the model once.
    """
    return list(_call_order(module, tuple(image_shape[1:])))


@functools.lru_cache(maxsize=64)
def _call_order(module: nn.Module, image_shape: tuple[int, ...]) -> tuple:
    order = []

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, layers.Activation) and context.method_name == "__call__":
            order.append((tuple(mod.path), mod.kind, mod.functional))
        return next_fun(*args, **kwargs)

    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(module.init, jax.random.key(0), dummy)
    return tuple(order)


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, variables, images):
    _, state = module.apply(variables, images, mutable=[layers.COLLECTION])
    return state.get(layers.COLLECTION, {})


def _lookup(tree: dict, path: tuple[str, ...]):
    for part in path:
        tree = tree[part]
    return tree["calls"]


def capture(
    module: nn.Module,
    variables: dict,
    images,
    *,
    chunk_size: int | None = None,
    functional: bool = False,
    progress=None,
) -> list[Call]:
    """Runs ``module`` on ``images`` and returns every activation call in order.

    Args:
        module: a Flax model built from :mod:`affjax.models` layers.
        variables: its variables (``params``, ``batch_stats``).
        images: ``[n, H, W, 3]`` float images, already preprocessed.
        chunk_size: forward at most this many images at once (memory); the
            reduced features are concatenated on the host.
        functional: also return ``torch.nn.functional`` call sites, which the
            reference does not see (keys ``"path:F.relu"``).
        progress: optional callable ``progress(done, total)`` after each chunk.

    Returns:
        :class:`Call` list in execution order, one per reference key: a
        ``ReLU6`` call comes twice, keyed ``..._Hardtanh`` then ``..._ReLU6``
        (torch's ``ReLU6`` subclasses ``Hardtanh`` and the reference hooks both).
    """
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    n = images.shape[0]
    step = n if not chunk_size else min(chunk_size, n)
    order = call_order(module, images.shape)
    chunks = []
    for start in range(0, n, step):
        chunk = jnp.asarray(images[start : start + step], jnp.float32)
        m = chunk.shape[0]
        if m < step:
            # Pad a short last chunk to the compiled shape (samples are
            # independent in eval mode) instead of compiling the forward again.
            pad = jnp.asarray(images[: step - m], jnp.float32)
            state = _forward(module, variables, jnp.concatenate([chunk, pad]))
            state = jax.tree.map(lambda a, m=m: a[:m], state)
        else:
            state = _forward(module, variables, chunk)
        chunks.append(jax.device_get(state))
        if progress is not None:
            progress(min(start + step, n), n)
    seen: dict[tuple[str, ...], int] = {}
    calls = []
    for path, kind, is_functional in order:
        k = seen.get(path, 0)
        seen[path] = k + 1
        if is_functional and not functional:
            continue
        recs = [_lookup(c, path)[k] for c in chunks]

        def cat(field, recs=recs):
            if field not in recs[0]:
                return None
            return np.concatenate([np.asarray(r[field]) for r in recs], axis=0)

        call = Call(
            key=reference_key(path, kind, is_functional),
            call=k,
            kind=kind,
            functional=is_functional,
            flax_path=path,
            x=cat("x"),
            y=cat("y"),
            x_channels=cat("x_channels"),
            y_channels=cat("y_channels"),
            sparsity_x=float(np.mean(cat("sparsity_x"), dtype=np.float64)),
            sparsity_y=float(np.mean(cat("sparsity_y"), dtype=np.float64)),
        )
        if is_functional:
            calls.append(call)
            continue
        # A module the reference keys under several classes (ReLU6 is a Hardtanh)
        # gives one Call per key, sharing the same arrays.
        calls.extend(
            call._replace(key=reference_key(path, cls, False), kind=cls)
            for cls in layers.reference_classes(kind)
        )
    return calls
