"""RegNetX and RegNetY (torchvision ``regnet.py``) in Flax.

Submodules carry torchvision's attribute names, nested as torch nests them:
``trunk_output.block2.block2-0.f.b.2`` (stage ``block2``, its first block
``block2-0``, the bottleneck transform ``f`` with its ``a``/``b``/``se``/``c``
children, ``b``'s activation ``2``). Every block ends with its own
``activation`` ReLU after the residual sum. RegNetY adds torchvision's
``SqueezeExcitation`` (``f.se``, a ReLU and a Sigmoid call site) between
``b`` and ``c``.

Stage widths come from torchvision's ``BlockParams.from_init_params``,
reproduced in :func:`block_params` with the same float32 arithmetic.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import layers, registry

__all__ = ["BlockParams", "RegNet", "ResBottleneckBlock", "block_params"]


class BlockParams(NamedTuple):
    """Per-stage settings, as torchvision's ``BlockParams`` holds them (strides are all 2)."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    group_widths: tuple[int, ...]
    bottleneck_multipliers: tuple[float, ...]
    se_ratio: float | None = None


def _make_divisible(v: float, divisor: int) -> int:
    """torchvision's ``_make_divisible`` (min_value = divisor)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def block_params(
    depth: int,
    w_0: int,
    w_a: float,
    w_m: float,
    group_width: int,
    bottleneck_multiplier: float = 1.0,
    se_ratio: float | None = None,
) -> BlockParams:
    """torchvision's ``BlockParams.from_init_params``.

    Block widths are quantised linear in log space:
    ``w_j = 8 round(w_0 w_m^round(log(1 + j w_a / w_0) / log w_m) / 8)``; runs
    of equal widths are stages. torch computes this in float32 (its default
    dtype), and so does this function, so rounding ties fall the same way.
    """
    quant = 8
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
        raise ValueError("Invalid RegNet settings")
    f32 = np.float32
    widths_cont = np.arange(depth).astype(f32) * f32(w_a) + f32(w_0)
    capacity = np.round(np.log(widths_cont / f32(w_0)) / f32(math.log(w_m)))
    block_widths = (
        (np.round(f32(w_0) * np.power(f32(w_m), capacity) / f32(quant)) * quant)
        .astype(int)
        .tolist()
    )
    # A new stage starts wherever the width changes.
    starts = [j for j in range(depth) if j == 0 or block_widths[j] != block_widths[j - 1]]
    stage_widths = [block_widths[j] for j in starts]
    stage_depths = np.diff([*starts, depth]).tolist()
    multipliers = [bottleneck_multiplier] * len(stage_widths)
    # _adjust_widths_groups_compatibilty: bottleneck width a multiple of the group width.
    bottleneck = [int(w * b) for w, b in zip(stage_widths, multipliers, strict=True)]
    groups = [min(group_width, w) for w in bottleneck]
    bottleneck = [_make_divisible(w, g) for w, g in zip(bottleneck, groups, strict=True)]
    stage_widths = [int(w / b) for w, b in zip(bottleneck, multipliers, strict=True)]
    return BlockParams(
        tuple(stage_depths), tuple(stage_widths), tuple(groups), tuple(multipliers), se_ratio
    )


class BottleneckTransform(nn.Module):
    """torchvision ``BottleneckTransform``: a ``Sequential`` of ``a``, ``b``, [``se``,] ``c``."""

    width_out: int
    stride: int
    group_width: int
    bottleneck_multiplier: float
    se_ratio: float | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width_in = x.shape[-1]
        w_b = int(round(self.width_out * self.bottleneck_multiplier))
        x = layers.ConvNormActivation(w_b, 1, name="a")(x)
        x = layers.ConvNormActivation(
            w_b, 3, self.stride, groups=w_b // self.group_width, name="b"
        )(x)
        if self.se_ratio:
            # torchvision: the SE width is relative to the block's input width.
            x = layers.SqueezeExcitation(int(round(self.se_ratio * width_in)), name="se")(x)
        return layers.ConvNormActivation(self.width_out, 1, activation=None, name="c")(x)


class ResBottleneckBlock(nn.Module):
    """torchvision ``ResBottleneckBlock``: ``activation(proj(x) + f(x))``.

    ``proj`` (1x1 conv + BatchNorm) exists when the width or the resolution changes.
    """

    width_out: int
    stride: int
    group_width: int
    bottleneck_multiplier: float = 1.0
    se_ratio: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        if x.shape[-1] != self.width_out or self.stride != 1:
            shortcut = layers.ConvNormActivation(
                self.width_out, 1, self.stride, activation=None, name="proj"
            )(x)
        out = BottleneckTransform(
            self.width_out,
            self.stride,
            self.group_width,
            self.bottleneck_multiplier,
            self.se_ratio,
            name="f",
        )(x)
        return layers.Activation("ReLU", name="activation")(shortcut + out)


class AnyStage(nn.Module):
    """torchvision ``AnyStage``: blocks named ``block{stage}-{i}``; the first one strides."""

    stage_index: int
    depth: int
    width_out: int
    group_width: int
    bottleneck_multiplier: float
    se_ratio: float | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = ResBottleneckBlock(
                self.width_out,
                2 if i == 0 else 1,
                self.group_width,
                self.bottleneck_multiplier,
                self.se_ratio,
                name=f"block{self.stage_index}-{i}",
            )(x)
        return x


class TrunkOutput(nn.Module):
    """torchvision's ``trunk_output`` ``Sequential`` of stages ``block1``, ``block2``..."""

    params: BlockParams

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.params
        for i in range(len(p.depths)):
            x = AnyStage(
                i + 1,
                p.depths[i],
                p.widths[i],
                p.group_widths[i],
                p.bottleneck_multipliers[i],
                p.se_ratio,
                name=f"block{i + 1}",
            )(x)
        return x


class RegNet(nn.Module):
    """torchvision ``RegNet`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        params: per-stage settings, from :func:`block_params`.
        num_classes: classifier width.
        stem_width: output channels of the stem (32 in every torchvision preset).
    """

    params: BlockParams
    num_classes: int = 1000
    stem_width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.ConvNormActivation(self.stem_width, 3, 2, name="stem")(x)  # SimpleStemIN
        x = TrunkOutput(self.params, name="trunk_output")(x)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        return nn.Dense(self.num_classes, name="fc")(x)


# name: BlockParams.from_init_params arguments, as in torchvision's builders.
_PRESETS: dict[str, dict] = {
    "regnet_y_400mf": dict(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25),
    "regnet_y_800mf": dict(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16, se_ratio=0.25),
    "regnet_y_1_6gf": dict(depth=27, w_0=48, w_a=20.71, w_m=2.65, group_width=24, se_ratio=0.25),
    "regnet_y_3_2gf": dict(depth=21, w_0=80, w_a=42.63, w_m=2.66, group_width=24, se_ratio=0.25),
    "regnet_y_8gf": dict(depth=17, w_0=192, w_a=76.82, w_m=2.19, group_width=56, se_ratio=0.25),
    "regnet_y_16gf": dict(depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112, se_ratio=0.25),
    "regnet_y_32gf": dict(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232, se_ratio=0.25),
    "regnet_y_128gf": dict(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264, se_ratio=0.25),
    "regnet_x_400mf": dict(depth=22, w_0=24, w_a=24.48, w_m=2.54, group_width=16),
    "regnet_x_800mf": dict(depth=16, w_0=56, w_a=35.73, w_m=2.28, group_width=16),
    "regnet_x_1_6gf": dict(depth=18, w_0=80, w_a=34.01, w_m=2.25, group_width=24),
    "regnet_x_3_2gf": dict(depth=25, w_0=88, w_a=26.31, w_m=2.25, group_width=48),
    "regnet_x_8gf": dict(depth=23, w_0=80, w_a=49.56, w_m=2.88, group_width=120),
    "regnet_x_16gf": dict(depth=22, w_0=216, w_a=55.59, w_m=2.1, group_width=128),
    "regnet_x_32gf": dict(depth=23, w_0=320, w_a=69.86, w_m=2.0, group_width=168),
}


def preset_params(name: str) -> BlockParams:
    """Per-stage settings of a torchvision preset, e.g. ``preset_params("regnet_y_400mf")``."""
    return block_params(**_PRESETS[name])


for _name in _PRESETS:
    registry.register(
        _name,
        "regnet",
        functools.partial(RegNet, params=preset_params(_name)),
        torch_class="RegNet",
    )
