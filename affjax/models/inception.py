"""Inception-v3 (torchvision ``inception.py``) in Flax.

As in GoogLeNet, every activation is the ``F.relu`` inside ``BasicConv2d``
(:class:`affjax.models.layers.BasicConv2d`, BatchNorm eps 1e-3): the
reference's signature is empty, ``functional=True`` scores all 94 calls.

Many torch attribute names end in ``_<digits>`` without being ``Sequential``
indices (``Mixed_5b.branch5x5_1``); their Flax names carry the
:data:`affjax.models.registry.VERBATIM` prefix (``"=branch5x5_1"``) so they map
back unchanged. The stem's names (``Conv2d_1a_3x3``) do not end in ``_<digits>``.

Eval only: ``AuxLogits`` runs only in training and is not ported (its weights
are dropped on conversion); dropout is the identity. The branch pools are
``F.avg_pool2d(3, 1, 1)`` with torch's default ``count_include_pad=True`` and
``F.max_pool2d(3, 2)`` without ``ceil_mode``. torchvision's weights expect
299 px images (its transforms resize to 342 and crop 299); the network
accepts 75 px and up.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["Inception3", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE"]


def _conv(features, kernel_size, stride=1, padding=0, *, name):
    """A branch ``BasicConv2d`` under torch's attribute name, taken verbatim."""
    return layers.BasicConv2d(features, kernel_size, stride, padding, name=registry.VERBATIM + name)


def _avg_pool(x: jax.Array) -> jax.Array:
    return layers.avg_pool(x, 3, 1, 1, count_include_pad=True)  # F.avg_pool2d(x, 3, 1, 1)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv(64, 1, name="branch1x1")(x)
        b5 = _conv(48, 1, name="branch5x5_1")(x)
        b5 = _conv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = _conv(64, 1, name="branch3x3dbl_1")(x)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = _conv(self.pool_features, 1, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(384, 3, 2, name="branch3x3")(x)
        bd = _conv(64, 1, name="branch3x3dbl_1")(x)
        bd = _conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = _conv(96, 3, 2, name="branch3x3dbl_3")(bd)
        bp = layers.max_pool(x, 3, 2)
        return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = _conv(192, 1, name="branch1x1")(x)
        b7 = _conv(c7, 1, name="branch7x7_1")(x)
        b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = _conv(c7, 1, name="branch7x7dbl_1")(x)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = _conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _conv(192, 1, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(192, 1, name="branch3x3_1")(x)
        b3 = _conv(320, 3, 2, name="branch3x3_2")(b3)
        b7 = _conv(192, 1, name="branch7x7x3_1")(x)
        b7 = _conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = _conv(192, 3, 2, name="branch7x7x3_4")(b7)
        bp = layers.max_pool(x, 3, 2)
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv(320, 1, name="branch1x1")(x)
        b3 = _conv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                _conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                _conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = _conv(448, 1, name="branch3x3dbl_1")(x)
        bd = _conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                _conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                _conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        bp = _conv(192, 1, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Inception3(nn.Module):
    """torchvision ``Inception3`` in eval mode on NHWC images; returns logits.

    Attributes:
        num_classes: classifier width.
        transform_input: torchvision's ``transform_input`` (True when built
            with pretrained weights, False for ``weights=None``); read off the
            torch instance on conversion.
    """

    num_classes: int = 1000
    transform_input: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.transform_input:
            x = layers.transform_input(x)
        x = layers.BasicConv2d(32, 3, 2, name="Conv2d_1a_3x3")(x)
        x = layers.BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = layers.BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = layers.max_pool(x, 3, 2)  # maxpool1
        x = layers.BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = layers.BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = layers.max_pool(x, 3, 2)  # maxpool2
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(name="Mixed_7c")(x)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
        return nn.Dense(self.num_classes, name="fc")(x)


registry.register(
    "inception_v3",
    "inception",
    Inception3,
    torch_class="Inception3",
    functional_only=True,
    from_torch=lambda m: {"transform_input": bool(m.transform_input)},
    ignore_torch_keys=("AuxLogits.",),
)
