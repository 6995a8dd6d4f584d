"""DenseNet-BC (torchvision ``densenet.py``) in Flax.

Submodules carry torchvision's attribute names, nested the way torch nests
them: torch's ``features.denseblock1.denselayer1.relu1`` is the Flax path
``("features", "denseblock1", "denselayer1", "relu1")``, so converted weights
and the reference's activation keys line up without a renaming table.

Inference only: torchvision's ``drop_rate`` defaults to 0 and dropout is the
identity in ``eval()`` anyway, and ``memory_efficient`` (gradient
checkpointing) does not change the forward values, so neither is ported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Features", "Transition"]


class DenseLayer(nn.Module):
    """torchvision ``_DenseLayer``: BN-ReLU-conv1x1 bottleneck, then BN-ReLU-conv3x3.

    Takes the block's features so far, already concatenated (torch's
    ``bn_function`` does ``torch.cat(inputs, 1)`` first), and returns only the
    ``growth_rate`` new channels.
    """

    growth_rate: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = layers.BatchNorm(name="norm1")(x)
        out = layers.Activation("ReLU", name="relu1")(out)
        out = layers.conv(self.bn_size * self.growth_rate, 1, bias=False, name="conv1")(out)
        out = layers.BatchNorm(name="norm2")(out)
        out = layers.Activation("ReLU", name="relu2")(out)
        return layers.conv(self.growth_rate, 3, 1, 1, bias=False, name="conv2")(out)


class DenseBlock(nn.Module):
    """torchvision ``_DenseBlock``: layer i sees the block input and layers 1..i-1.

    torch keeps a list ``[init, f1, f2, ...]`` and every layer concatenates it
    from scratch; growing one NHWC array by appending each new layer's channels
    at the end gives the same channel order (the block input first, then the
    layers in call order, which is what ``norm1``'s statistics and ``conv1``'s
    weights index) with a single concatenation per layer.
    """

    num_layers: int
    growth_rate: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, name=f"denselayer{i + 1}")(x)
            x = jnp.concatenate([x, new], axis=-1)  # NHWC: channels last = torch's dim 1
        return x


class Transition(nn.Module):
    """torchvision ``_Transition``: BN-ReLU-conv1x1 halving channels, AvgPool2d(2, 2)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.Activation("ReLU", name="relu")(layers.BatchNorm(name="norm")(x))
        x = layers.conv(self.features, 1, bias=False, name="conv")(x)
        return layers.avg_pool(x, 2, 2)  # floors odd sizes, as torch does


class Features(nn.Module):
    """torchvision's ``DenseNet.features`` ``Sequential`` (stem, blocks, transitions, norm5).

    Ends with ``norm5``, *not* a ReLU: torchvision applies the last ReLU as a
    functional call in ``DenseNet.forward``.
    """

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.num_init_features, 7, 2, 3, bias=False, name="conv0")(x)
        x = layers.Activation("ReLU", name="relu0")(layers.BatchNorm(name="norm0")(x))
        x = layers.max_pool(x, 3, 2, 1)  # pool0
        num_features = self.num_init_features
        for i, num_layers in enumerate(self.block_config):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, name=f"denseblock{i + 1}")(x)
            num_features += num_layers * self.growth_rate
            if i != len(self.block_config) - 1:
                num_features //= 2
                x = Transition(num_features, name=f"transition{i + 1}")(x)
        return layers.BatchNorm(name="norm5")(x)


class DenseNet(nn.Module):
    """torchvision ``DenseNet`` on NHWC images; returns logits ``[n, num_classes]``."""

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Features(
            self.growth_rate,
            self.block_config,
            self.num_init_features,
            self.bn_size,
            name="features",
        )(x)
        # torch's forward calls F.relu(features): no module, so the reference's
        # hooks never see it. It is still an activation of the network, kept
        # as a functional call site; its key reads "features_relu:F.relu", the
        # ReLU of `features`' output (no torch attribute has this name).
        x = layers.Activation("ReLU", functional=True, name="features_relu")(x)
        x = jnp.mean(x, axis=(1, 2))  # F.adaptive_avg_pool2d(out, (1, 1)) + flatten
        return nn.Dense(self.num_classes, name="classifier")(x)


# name: (growth_rate, block_config, num_init_features), as in torchvision.
_PRESETS = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}

for _name, (_growth, _blocks, _init) in _PRESETS.items():
    registry.register(
        _name,
        "densenet",
        functools.partial(
            DenseNet, growth_rate=_growth, block_config=_blocks, num_init_features=_init
        ),
        torch_class="DenseNet",
    )
