"""GoogLeNet / Inception v1 (torchvision ``googlenet.py``) in Flax.

Every activation is the ``F.relu`` inside ``BasicConv2d``
(:class:`affjax.models.layers.BasicConv2d`), a functional call the
reference's hooks never see: its signature is empty unless
``functional=True``, which scores all 57 calls under keys like
``inception3a.branch2.1.relu:F.relu``.

Eval only: the auxiliary classifiers ``aux1``/``aux2`` run only in training,
so they are not ported and their weights are dropped on conversion.
Dropout is the identity. As in torchvision, ``branch3`` of each Inception
block uses a 3x3 convolution (not the paper's 5x5), and every max pool
rounds up (``ceil_mode=True``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["GoogLeNet", "Inception"]

BasicConv2d = layers.BasicConv2d


class Inception(nn.Module):
    """torchvision ``googlenet.Inception``: four branches concatenated on channels."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1 = BasicConv2d(self.ch1x1, 1, name="branch1")(x)
        branch2 = BasicConv2d(self.ch3x3red, 1, name="branch2_0")(x)
        branch2 = BasicConv2d(self.ch3x3, 3, padding=1, name="branch2_1")(branch2)
        branch3 = BasicConv2d(self.ch5x5red, 1, name="branch3_0")(x)
        branch3 = BasicConv2d(self.ch5x5, 3, padding=1, name="branch3_1")(branch3)
        branch4 = layers.max_pool(x, 3, 1, 1, ceil_mode=True)  # branch4.0
        branch4 = BasicConv2d(self.pool_proj, 1, name="branch4_1")(branch4)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


# name: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj), as in torchvision.
_INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
# max pools after these blocks: (kernel, stride), all ceil_mode=True
_POOL_AFTER = {"inception3b": (3, 2), "inception4e": (2, 2)}


class GoogLeNet(nn.Module):
    """torchvision ``GoogLeNet`` in eval mode on NHWC images; returns logits.

    Attributes:
        num_classes: classifier width.
        transform_input: torchvision's ``transform_input`` (True when built
            with pretrained weights, False for ``weights=None``): re-normalises
            ImageNet-normalised inputs to the ``(x - 0.5) / 0.5`` the original
            weights expect. Read off the torch instance on conversion.
    """

    num_classes: int = 1000
    transform_input: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.transform_input:
            x = layers.transform_input(x)
        x = BasicConv2d(64, 7, 2, 3, name="conv1")(x)
        x = layers.max_pool(x, 3, 2, ceil_mode=True)  # maxpool1
        x = BasicConv2d(64, 1, name="conv2")(x)
        x = BasicConv2d(192, 3, padding=1, name="conv3")(x)
        x = layers.max_pool(x, 3, 2, ceil_mode=True)  # maxpool2
        for name, channels in _INCEPTIONS.items():
            x = Inception(*channels, name=name)(x)
            if name in _POOL_AFTER:
                x = layers.max_pool(x, *_POOL_AFTER[name], ceil_mode=True)  # maxpool3, maxpool4
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        return nn.Dense(self.num_classes, name="fc")(x)


registry.register(
    "googlenet",
    "googlenet",
    GoogLeNet,
    torch_class="GoogLeNet",
    functional_only=True,
    from_torch=lambda m: {"transform_input": bool(m.transform_input)},
    ignore_torch_keys=("aux1.", "aux2."),
)
