"""EfficientNet B0-B7 and EfficientNetV2 S/M/L (torchvision ``efficientnet.py``) in Flax.

Submodules carry torchvision's attribute names: torch's
``features.2.1.block.3.0`` is the Flax path ``("features_2", "1", "block_3", "0")``
(``features_2`` is the stage ``Sequential``, ``"1"`` its block, ``block_3`` the
block's ``Sequential`` child), so converted weights and the reference's
activation keys line up without a renaming table.

Every activation is a ``SiLU`` module, apart from the squeeze-excitation gate
(``Sigmoid``); the SE block's own ``SiLU`` and its gate are call sites of their
own (``...block.2.activation_SiLU``, ``...block.2.scale_activation_Sigmoid``).
torchvision's SiLUs are in-place; the reference clones their input, so the
values it sees are the out-of-place ones computed here.

Inference only: ``StochasticDepth`` and the classifier's ``Dropout`` are the
identity in ``eval()``, so neither is ported.

BatchNorm eps differs per variant, as in torchvision: 1e-5 for B0-B4, 1e-3 for
B5-B7 (their ``norm_layer`` is ``BatchNorm2d(eps=0.001, momentum=0.01)``) and
for every V2 model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = [
    "BlockConfig",
    "EfficientNet",
    "FusedMBConv",
    "MBConv",
    "Stage",
    "make_divisible",
    "stage_configs",
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: a multiple of ``divisor`` near ``v``, not 10 % below."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class BlockConfig(NamedTuple):
    """One stage of ``inverted_residual_setting``, channels and depth already scaled."""

    fused: bool  # FusedMBConv (V2's first stages) instead of MBConv
    expand_ratio: float
    kernel: int
    stride: int  # of the stage's first block; the others have stride 1
    input_channels: int  # of the stage's first block; the others take out_channels
    out_channels: int
    num_layers: int


def _mbconv(expand, kernel, stride, cin, cout, layers_, width_mult=1.0, depth_mult=1.0):
    # torchvision's MBConvConfig: channels via _make_divisible, depth rounded up.
    return BlockConfig(
        False,
        expand,
        kernel,
        stride,
        make_divisible(cin * width_mult),
        make_divisible(cout * width_mult),
        int(math.ceil(layers_ * depth_mult)),
    )


def _fused(expand, kernel, stride, cin, cout, layers_):
    # torchvision's FusedMBConvConfig: channels and depth as given (no multipliers).
    return BlockConfig(True, expand, kernel, stride, cin, cout, layers_)


def stage_configs(arch: str, width_mult: float = 1.0, depth_mult: float = 1.0) -> list[BlockConfig]:
    """torchvision's ``_efficientnet_conf``: ``"b"`` (V1, scaled) or ``"v2_s"/"v2_m"/"v2_l"``."""
    if arch == "b":
        conf = functools.partial(_mbconv, width_mult=width_mult, depth_mult=depth_mult)
        return [
            conf(1, 3, 1, 32, 16, 1),
            conf(6, 3, 2, 16, 24, 2),
            conf(6, 5, 2, 24, 40, 2),
            conf(6, 3, 2, 40, 80, 3),
            conf(6, 5, 1, 80, 112, 3),
            conf(6, 5, 2, 112, 192, 4),
            conf(6, 3, 1, 192, 320, 1),
        ]
    if arch == "v2_s":
        return [
            _fused(1, 3, 1, 24, 24, 2),
            _fused(4, 3, 2, 24, 48, 4),
            _fused(4, 3, 2, 48, 64, 4),
            _mbconv(4, 3, 2, 64, 128, 6),
            _mbconv(6, 3, 1, 128, 160, 9),
            _mbconv(6, 3, 2, 160, 256, 15),
        ]
    if arch == "v2_m":
        return [
            _fused(1, 3, 1, 24, 24, 3),
            _fused(4, 3, 2, 24, 48, 5),
            _fused(4, 3, 2, 48, 80, 5),
            _mbconv(4, 3, 2, 80, 160, 7),
            _mbconv(6, 3, 1, 160, 176, 14),
            _mbconv(6, 3, 2, 176, 304, 18),
            _mbconv(6, 3, 1, 304, 512, 5),
        ]
    if arch == "v2_l":
        return [
            _fused(1, 3, 1, 32, 32, 4),
            _fused(4, 3, 2, 32, 64, 7),
            _fused(4, 3, 2, 64, 96, 7),
            _mbconv(4, 3, 2, 96, 192, 10),
            _mbconv(6, 3, 1, 192, 224, 19),
            _mbconv(6, 3, 2, 224, 384, 25),
            _mbconv(6, 3, 1, 384, 640, 7),
        ]
    raise ValueError(f"unknown EfficientNet architecture {arch!r}")


class MBConv(nn.Module):
    """torchvision ``MBConv``: [expand 1x1] -> depthwise -> SE -> project 1x1 (+ residual).

    ``block_<i>`` are the children of torch's ``block`` ``Sequential``; without
    an expansion (expand ratio 1) the depthwise conv is ``block.0``.
    """

    input_channels: int
    out_channels: int
    expand_ratio: float
    kernel: int
    stride: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cnr = functools.partial(layers.ConvNormActivation, activation="SiLU", eps=self.eps)
        expanded = make_divisible(self.input_channels * self.expand_ratio)
        index = 0
        out = x
        if expanded != self.input_channels:
            out = cnr(expanded, 1, name=f"block_{index}")(out)
            index += 1
        out = cnr(expanded, self.kernel, self.stride, groups=expanded, name=f"block_{index}")(out)
        out = layers.SqueezeExcitation(
            max(1, self.input_channels // 4), activation_kind="SiLU", name=f"block_{index + 1}"
        )(out)
        out = cnr(self.out_channels, 1, activation=None, name=f"block_{index + 2}")(out)
        if self.stride == 1 and self.input_channels == self.out_channels:
            out = out + x  # StochasticDepth is the identity in eval
        return out


class FusedMBConv(nn.Module):
    """torchvision ``FusedMBConv``: fused k x k expand -> project 1x1, or one k x k conv."""

    input_channels: int
    out_channels: int
    expand_ratio: float
    kernel: int
    stride: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cnr = functools.partial(layers.ConvNormActivation, activation="SiLU", eps=self.eps)
        expanded = make_divisible(self.input_channels * self.expand_ratio)
        if expanded != self.input_channels:
            out = cnr(expanded, self.kernel, self.stride, name="block_0")(x)
            out = cnr(self.out_channels, 1, activation=None, name="block_1")(out)
        else:
            out = cnr(self.out_channels, self.kernel, self.stride, name="block_0")(x)
        if self.stride == 1 and self.input_channels == self.out_channels:
            out = out + x  # StochasticDepth is the identity in eval
        return out


class Stage(nn.Module):
    """One ``features.<i>`` ``Sequential`` of blocks, named ``"0"``, ``"1"``..."""

    config: BlockConfig
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        block = FusedMBConv if c.fused else MBConv
        for j in range(c.num_layers):
            first = j == 0
            x = block(
                c.input_channels if first else c.out_channels,
                c.out_channels,
                c.expand_ratio,
                c.kernel,
                c.stride if first else 1,
                eps=self.eps,
                name=str(j),
            )(x)
        return x


class EfficientNet(nn.Module):
    """torchvision ``EfficientNet`` (V1 and V2) on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        stages: the scaled ``inverted_residual_setting`` (:func:`stage_configs`).
        last_channel: width of the last 1x1 conv; ``None`` is 4x the last stage's.
        eps: BatchNorm eps of every norm layer.
    """

    stages: Sequence[BlockConfig]
    last_channel: int | None = None
    eps: float = 1e-5
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cnr = functools.partial(layers.ConvNormActivation, activation="SiLU", eps=self.eps)
        x = cnr(self.stages[0].input_channels, 3, 2, name="features_0")(x)
        for i, config in enumerate(self.stages):
            x = Stage(config, eps=self.eps, name=f"features_{i + 1}")(x)
        last = self.last_channel or 4 * self.stages[-1].out_channels
        x = cnr(last, 1, name=f"features_{len(self.stages) + 1}")(x)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten
        return nn.Dense(self.num_classes, name="classifier_1")(x)  # classifier.0 is Dropout


# name: (arch, width_mult, depth_mult, BatchNorm eps, last_channel), as in torchvision.
_PRESETS = {
    "efficientnet_b0": ("b", 1.0, 1.0, 1e-5, None),
    "efficientnet_b1": ("b", 1.0, 1.1, 1e-5, None),
    "efficientnet_b2": ("b", 1.1, 1.2, 1e-5, None),
    "efficientnet_b3": ("b", 1.2, 1.4, 1e-5, None),
    "efficientnet_b4": ("b", 1.4, 1.8, 1e-5, None),
    "efficientnet_b5": ("b", 1.6, 2.2, 1e-3, None),
    "efficientnet_b6": ("b", 1.8, 2.6, 1e-3, None),
    "efficientnet_b7": ("b", 2.0, 3.1, 1e-3, None),
    "efficientnet_v2_s": ("v2_s", 1.0, 1.0, 1e-3, 1280),
    "efficientnet_v2_m": ("v2_m", 1.0, 1.0, 1e-3, 1280),
    "efficientnet_v2_l": ("v2_l", 1.0, 1.0, 1e-3, 1280),
}

for _name, (_arch, _width, _depth, _eps, _last) in _PRESETS.items():
    registry.register(
        _name,
        "efficientnet",
        functools.partial(
            EfficientNet,
            stages=tuple(stage_configs(_arch, _width, _depth)),
            last_channel=_last,
            eps=_eps,
        ),
        torch_class="EfficientNet",
    )
