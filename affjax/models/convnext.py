"""ConvNeXt (torchvision ``convnext.py``) in Flax.

Submodules carry torchvision's names: ``features_1/0/block/4`` is torch's
``features.1.0.block.4`` (the GELU of a ``CNBlock``). The block's ``Sequential``
is conv, Permute, LayerNorm, Linear, GELU, Linear, Permute, so its children
keep torch's indices 0, 2, 3, 4, 5 (the Permutes hold no parameters).

Torch runs the block's LayerNorm, Linears and GELU on a channels-last
``[N, H, W, C]`` tensor: the GELU is ``torch_layout="same"``, and the
reference reduction averages torch's last two axes (W, C), keeping H.
``LayerNorm2d`` (stem, downsampling, classifier) normalises channels of an
NCHW tensor: on our NHWC arrays that is a LayerNorm over the last axis.
Every LayerNorm has eps 1e-6. ``layer_scale`` is a torch Parameter of shape
``[C, 1, 1]``, kept in that shape so it converts verbatim.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["CNBlock", "ConvNeXt"]

_EPS = 1e-6


def _layer_norm(name: str) -> nn.LayerNorm:
    return layers.LayerNorm(epsilon=_EPS, name=name)


class _Block(nn.Module):
    """``CNBlock.block``: dwconv 7x7, (Permute), LayerNorm, Linear, GELU, Linear, (Permute)."""

    dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.dim, 7, 1, 3, groups=self.dim, name="0")(x)
        x = _layer_norm("2")(x)
        x = nn.Dense(4 * self.dim, name="3")(x)
        x = layers.Activation("GELU", torch_layout="same", name="4")(x)
        return nn.Dense(self.dim, name="5")(x)


class CNBlock(nn.Module):
    """torchvision ``CNBlock`` in eval mode (stochastic depth is the identity)."""

    dim: int
    layer_scale: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "layer_scale", nn.initializers.constant(self.layer_scale), (self.dim, 1, 1)
        )
        return x + scale.reshape(self.dim) * _Block(self.dim, name="block")(x)


class _Stage(nn.Module):
    """A ``Sequential`` of CNBlocks, children named ``"0"``, ``"1"``..."""

    dim: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = CNBlock(self.dim, name=str(i))(x)
        return x


class _Stem(nn.Module):
    """``Conv2dNormActivation`` with a LayerNorm2d and no activation."""

    dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.dim, 4, 4, 0, name="0")(x)
        return _layer_norm("1")(x)


class _Downsample(nn.Module):
    """LayerNorm2d then a 2x2 stride-2 conv."""

    dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _layer_norm("0")(x)
        return layers.conv(self.dim, 2, 2, 0, name="1")(x)


class ConvNeXt(nn.Module):
    """torchvision ``ConvNeXt`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        dims: channels of the four stages.
        depths: blocks per stage.
    """

    dims: Sequence[int]
    depths: Sequence[int]
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Stem(self.dims[0], name="features_0")(x)
        index = 1
        for i, (dim, depth) in enumerate(zip(self.dims, self.depths, strict=True)):
            x = _Stage(dim, depth, name=f"features_{index}")(x)
            index += 1
            if i + 1 < len(self.dims):
                x = _Downsample(self.dims[i + 1], name=f"features_{index}")(x)
                index += 1
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1); Flatten(1) is "classifier.1"
        x = _layer_norm("classifier_0")(x)
        return nn.Dense(self.num_classes, name="classifier_2")(x)


_PRESETS = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3)),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
    "convnext_large": ((192, 384, 768, 1536), (3, 3, 27, 3)),
}

for _name, (_dims, _depths) in _PRESETS.items():
    registry.register(
        _name,
        "convnext",
        functools.partial(ConvNeXt, dims=_dims, depths=_depths),
        torch_class="ConvNeXt",
    )
