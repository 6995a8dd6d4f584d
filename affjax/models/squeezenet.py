"""SqueezeNet 1.0 and 1.1 (torchvision ``squeezenet.py``) in Flax.

Submodules carry torchvision's attribute names: ``features_3`` is the Fire
module torch calls ``features.3``, with its own ``squeeze``,
``squeeze_activation``, ``expand1x1``... The classifier is Dropout (omitted),
a 1x1 conv (``classifier_1``), a ReLU (``classifier_2``) and a global average
pool, so the logits are non-negative, as in torchvision.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["Fire", "SqueezeNet"]


class Fire(nn.Module):
    """torchvision ``Fire``: squeeze 1x1, then 1x1 and 3x3 expands concatenated."""

    squeeze_planes: int
    expand1x1_planes: int
    expand3x3_planes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.squeeze_planes, 1, name="squeeze")(x)
        x = layers.Activation("ReLU", name="squeeze_activation")(x)
        a = layers.conv(self.expand1x1_planes, 1, name="expand1x1")(x)
        a = layers.Activation("ReLU", name="expand1x1_activation")(a)
        b = layers.conv(self.expand3x3_planes, 3, 1, 1, name="expand3x3")(x)
        b = layers.Activation("ReLU", name="expand3x3_activation")(b)
        # torch.cat(..., 1) on NCHW is the channel axis: our last.
        return jnp.concatenate([a, b], axis=-1)


# Layers of torch's features Sequential after the stem (conv 0, ReLU 1, pool 2):
# "M" is MaxPool2d(3, 2, ceil_mode=True), a tuple a Fire's (squeeze, expand1x1, expand3x3).
_FEATURES = {
    "1_0": (
        (16, 64, 64), (16, 64, 64), (32, 128, 128), "M",
        (32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256), "M",
        (64, 256, 256),
    ),
    "1_1": (
        (16, 64, 64), (16, 64, 64), "M",
        (32, 128, 128), (32, 128, 128), "M",
        (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256),
    ),
}  # fmt: skip

# Stem conv per version: (out channels, kernel, stride), no padding.
_STEM = {"1_0": (96, 7, 2), "1_1": (64, 3, 2)}


def _pool(x: jax.Array) -> jax.Array:
    # ceil_mode=True: a partial window hanging over the bottom/right edge still
    # yields an output, the max over its real entries (squeezenet1_0 at 224:
    # 54 -> 27 rows where floor mode gives 26), and the classifier sees it.
    return layers.max_pool(x, 3, 2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """torchvision ``SqueezeNet`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        version: ``"1_0"`` or ``"1_1"``.
        num_classes: outputs of the final 1x1 conv.
    """

    version: str = "1_0"
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.version not in _STEM:
            raise ValueError(f"Unsupported SqueezeNet version {self.version}: 1_0 or 1_1 expected")
        c, k, s = _STEM[self.version]
        x = layers.conv(c, k, s, name="features_0")(x)
        x = layers.Activation("ReLU", name="features_1")(x)
        x = _pool(x)
        for i, spec in enumerate(_FEATURES[self.version], start=3):
            x = _pool(x) if spec == "M" else Fire(*spec, name=f"features_{i}")(x)
        x = layers.conv(self.num_classes, 1, name="classifier_1")(x)
        x = layers.Activation("ReLU", name="classifier_2")(x)
        x = layers.adaptive_avg_pool(x, 1)  # AdaptiveAvgPool2d((1, 1))
        return layers.flatten_nchw(x)


for _version in ("1_0", "1_1"):
    registry.register(
        f"squeezenet{_version}",
        "squeezenet",
        functools.partial(SqueezeNet, version=_version),
        torch_class="SqueezeNet",
    )
