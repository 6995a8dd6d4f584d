"""MobileNetV2 and MobileNetV3 (torchvision ``mobilenetv2.py``, ``mobilenetv3.py``) in Flax.

Submodules carry torchvision's attribute names: torch's ``features.2.conv.1.2``
(a depthwise ``Conv2dNormActivation``'s ReLU6) is the Flax path
``("features_2", "conv_1", "2")``, torch's ``features.4.block.2.fc1`` (a
MobileNetV3 squeeze-excitation) is ``("features_4", "block_2", "fc1")``.

What differs from the other families:

* MobileNetV2's activations are ``ReLU6``, which torch derives from
  ``Hardtanh``: the reference records every call under both keys
  (``..._Hardtanh`` and ``..._ReLU6``), and so does :func:`affjax.capture.capture`.
* MobileNetV3's BatchNorms use eps 1e-3 (torch's default is 1e-5); its
  squeeze-excitation is ``torchvision.ops.SqueezeExcitation`` with a ReLU and a
  Hardsigmoid gate, two call sites; its classifier has a Hardswish on ``[n, d]``.
* Dropout is the identity in eval and not ported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["BlockConfig", "InvertedResidualV2", "InvertedResidualV3", "MobileNetV2", "MobileNetV3"]


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: nearest multiple, never 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# --------------------------------------------------------------------------- V2


class InvertedResidualV2(nn.Module):
    """torchvision ``mobilenetv2.InvertedResidual``: expand 1x1, depthwise 3x3, project 1x1.

    ``conv`` is a ``Sequential``: ``conv.0`` the expansion (absent when
    ``expand_ratio == 1``), then the depthwise ``Conv2dNormActivation``, the
    projection ``Conv2d`` and its BatchNorm.
    """

    inp: int
    oup: int
    stride: int
    expand_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = int(round(self.inp * self.expand_ratio))
        i = 0
        out = x
        if self.expand_ratio != 1:
            out = layers.ConvNormActivation(hidden, 1, activation="ReLU6", name="conv_0")(out)
            i = 1
        out = layers.ConvNormActivation(
            hidden, 3, self.stride, groups=hidden, activation="ReLU6", name=f"conv_{i}"
        )(out)
        out = layers.conv(self.oup, 1, bias=False, name=f"conv_{i + 1}")(out)
        out = layers.BatchNorm(name=f"conv_{i + 2}")(out)
        return x + out if self.stride == 1 and self.inp == self.oup else out


# torchvision's inverted_residual_setting: expand ratio t, channels c, repeats n, stride s.
_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """torchvision ``MobileNetV2`` on NHWC images; returns logits ``[n, num_classes]``."""

    num_classes: int = 1000
    width_mult: float = 1.0
    round_nearest: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = make_divisible(32 * self.width_mult, self.round_nearest)
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = layers.ConvNormActivation(channels, 3, 2, activation="ReLU6", name="features_0")(x)
        index = 1
        for t, c, n, s in _V2_SETTING:
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                x = InvertedResidualV2(
                    channels, out, s if i == 0 else 1, t, name=f"features_{index}"
                )(x)
                channels = out
                index += 1
        x = layers.ConvNormActivation(last, 1, activation="ReLU6", name=f"features_{index}")(x)
        x = jnp.mean(x, axis=(1, 2))  # adaptive_avg_pool2d((1, 1)) + flatten
        # classifier.0 is Dropout: the identity in eval.
        return nn.Dense(self.num_classes, name="classifier_1")(x)


# --------------------------------------------------------------------------- V3


class BlockConfig(NamedTuple):
    """torchvision ``InvertedResidualConfig`` (channels before ``width_mult``)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride: int
    dilation: int = 1


_BN_EPS_V3 = 1e-3  # torchvision: partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class InvertedResidualV3(nn.Module):
    """torchvision ``mobilenetv3.InvertedResidual``: expand, depthwise, SE, project.

    ``block`` is a ``Sequential`` of ``Conv2dNormActivation`` s and an optional
    ``SqueezeExcitation`` (ReLU, then a Hardsigmoid gate); torch indexes its
    children, so they shift by one when there is no expansion.
    """

    cnf: BlockConfig
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cnf = self.cnf
        inp, expanded, out_ch = (
            make_divisible(c * self.width_mult)
            for c in (cnf.input_channels, cnf.expanded_channels, cnf.out_channels)
        )
        act = "Hardswish" if cnf.activation == "HS" else "ReLU"
        cna = functools.partial(layers.ConvNormActivation, eps=_BN_EPS_V3)
        names = (f"block_{i}" for i in range(4))
        out = x
        if expanded != inp:
            out = cna(expanded, 1, activation=act, name=next(names))(out)
        out = cna(
            expanded,
            cnf.kernel,
            1 if cnf.dilation > 1 else cnf.stride,
            groups=expanded,
            dilation=cnf.dilation,
            activation=act,
            name=next(names),
        )(out)
        if cnf.use_se:
            out = layers.SqueezeExcitation(
                make_divisible(expanded // 4), scale_kind="Hardsigmoid", name=next(names)
            )(out)
        out = cna(out_ch, 1, activation=None, name=next(names))(out)
        return out + x if cnf.stride == 1 and inp == out_ch else out


_V3_LARGE = (
    BlockConfig(16, 3, 16, 16, False, "RE", 1),
    BlockConfig(16, 3, 64, 24, False, "RE", 2),
    BlockConfig(24, 3, 72, 24, False, "RE", 1),
    BlockConfig(24, 5, 72, 40, True, "RE", 2),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 3, 240, 80, False, "HS", 2),
    BlockConfig(80, 3, 200, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 480, 112, True, "HS", 1),
    BlockConfig(112, 3, 672, 112, True, "HS", 1),
    BlockConfig(112, 5, 672, 160, True, "HS", 2),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
)

_V3_SMALL = (
    BlockConfig(16, 3, 16, 16, True, "RE", 2),
    BlockConfig(16, 3, 72, 24, False, "RE", 2),
    BlockConfig(24, 3, 88, 24, False, "RE", 1),
    BlockConfig(24, 5, 96, 40, True, "HS", 2),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 120, 48, True, "HS", 1),
    BlockConfig(48, 5, 144, 48, True, "HS", 1),
    BlockConfig(48, 5, 288, 96, True, "HS", 2),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
)


class MobileNetV3(nn.Module):
    """torchvision ``MobileNetV3`` on NHWC images; returns logits ``[n, num_classes]``."""

    setting: Sequence[BlockConfig] = _V3_LARGE
    last_channel: int = 1280
    num_classes: int = 1000
    width_mult: float = 1.0
    # torchvision's ``dilated=True``: the last 3 blocks (C4 on) dilate by 2 instead of
    # striding. Same parameter shapes, so it is read off the torch instance.
    dilated: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        first = make_divisible(self.setting[0].input_channels * self.width_mult)
        x = layers.ConvNormActivation(
            first, 3, 2, activation="Hardswish", eps=_BN_EPS_V3, name="features_0"
        )(x)
        for i, cnf in enumerate(self.setting):
            if self.dilated and i >= len(self.setting) - 3:
                cnf = cnf._replace(dilation=2)
            x = InvertedResidualV3(cnf, self.width_mult, name=f"features_{i + 1}")(x)
        last_conv = 6 * make_divisible(self.setting[-1].out_channels * self.width_mult)
        x = layers.ConvNormActivation(
            last_conv,
            1,
            activation="Hardswish",
            eps=_BN_EPS_V3,
            name=f"features_{len(self.setting) + 1}",
        )(x)
        x = jnp.mean(x, axis=(1, 2))  # avgpool (AdaptiveAvgPool2d(1)) + flatten
        x = nn.Dense(make_divisible(self.last_channel * self.width_mult), name="classifier_0")(x)
        x = layers.Activation("Hardswish", name="classifier_1")(x)
        # classifier.2 is Dropout: the identity in eval.
        return nn.Dense(self.num_classes, name="classifier_3")(x)


def _v3_from_torch(model) -> dict:
    dilated = any(getattr(m, "dilation", (1, 1))[0] > 1 for m in model.features.modules())
    return {"dilated": True} if dilated else {}


registry.register("mobilenet_v2", "mobilenet", MobileNetV2, torch_class="MobileNetV2")
registry.register(
    "mobilenet_v3_large",
    "mobilenet",
    functools.partial(MobileNetV3, setting=_V3_LARGE, last_channel=1280),
    torch_class="MobileNetV3",
    from_torch=_v3_from_torch,
)
registry.register(
    "mobilenet_v3_small",
    "mobilenet",
    functools.partial(MobileNetV3, setting=_V3_SMALL, last_channel=1024),
    torch_class="MobileNetV3",
    from_torch=_v3_from_torch,
)
