"""ResNet, ResNeXt and Wide ResNet (torchvision ``resnet.py``) in Flax.

Submodules carry torchvision's attribute names (``layer1_0.downsample_0`` is
torch's ``layer1.0.downsample.0``). Each block owns one ``relu`` call site that
torchvision calls 2 (BasicBlock) or 3 (Bottleneck) times; so does ours.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        relu = layers.Activation("ReLU", name="relu")
        out = layers.conv(self.planes, 3, self.stride, 1, bias=False, name="conv1")(x)
        out = relu(layers.BatchNorm(name="bn1")(out))
        out = layers.conv(self.planes, 3, 1, 1, bias=False, name="conv2")(out)
        out = layers.BatchNorm(name="bn2")(out)
        if self.downsample:
            x = layers.conv(self.planes, 1, self.stride, bias=False, name="downsample_0")(x)
            x = layers.BatchNorm(name="downsample_1")(x)
        return relu(out + x)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        relu = layers.Activation("ReLU", name="relu")
        out = layers.conv(width, 1, bias=False, name="conv1")(x)
        out = relu(layers.BatchNorm(name="bn1")(out))
        out = layers.conv(width, 3, self.stride, 1, groups=self.groups, bias=False, name="conv2")(
            out
        )
        out = relu(layers.BatchNorm(name="bn2")(out))
        out = layers.conv(self.planes * 4, 1, bias=False, name="conv3")(out)
        out = layers.BatchNorm(name="bn3")(out)
        if self.downsample:
            x = layers.conv(self.planes * 4, 1, self.stride, bias=False, name="downsample_0")(x)
            x = layers.BatchNorm(name="downsample_1")(x)
        return relu(out + x)


class ResNet(nn.Module):
    """torchvision ``ResNet`` on NHWC images; returns logits ``[n, num_classes]``."""

    block: type[BasicBlock] | type[Bottleneck]
    stage_sizes: Sequence[int]
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(64, 7, 2, 3, bias=False, name="conv1")(x)
        x = layers.Activation("ReLU", name="relu")(layers.BatchNorm(name="bn1")(x))
        x = layers.max_pool(x, 3, 2, 1)
        inplanes = 64
        for i, blocks in enumerate(self.stage_sizes):
            planes = 64 * 2**i
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                x = self.block(
                    planes,
                    stride=stride,
                    downsample=j == 0
                    and (stride != 1 or inplanes != planes * self.block.expansion),
                    groups=self.groups,
                    base_width=self.width_per_group,
                    name=f"layer{i + 1}_{j}",
                )(x)
                inplanes = planes * self.block.expansion
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        return nn.Dense(self.num_classes, name="fc")(x)


_PRESETS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (Bottleneck, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 1, 128),
}

for _name, (_block, _stages, _groups, _width) in _PRESETS.items():
    registry.register(
        _name,
        "resnet",
        functools.partial(
            ResNet, block=_block, stage_sizes=_stages, groups=_groups, width_per_group=_width
        ),
        torch_class="ResNet",
    )
