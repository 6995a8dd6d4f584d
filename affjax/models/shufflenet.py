"""ShuffleNetV2 (torchvision ``shufflenetv2.py``) in Flax.

Submodules carry torchvision's attribute names: torch's ``stage3.0.branch2.7``
(a ReLU) is the Flax path ``("stage3_0", "branch2_7")``, ``conv1.2`` is
``conv1_2``.

Channel order is torch's, on our NHWC arrays: ``x.chunk(2, dim=1)`` splits the
channel axis into its first and second halves, ``torch.cat(..., dim=1)``
concatenates on it, and :func:`channel_shuffle` reproduces torch's
``view(n, g, c // g, h, w) -> transpose(1, 2) -> view(n, c, h, w)``, so every
BatchNorm and conv weight indexes the channels torch's do. BatchNorm eps is
torch's default 1e-5.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["InvertedResidual", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """torchvision's ``channel_shuffle`` on channels-last ``[..., c]``.

    torch views channels as ``[groups, c // groups]`` and transposes them, so
    output channel ``k * groups + g`` is input channel ``g * (c // groups) + k``.
    """
    *lead, c = x.shape
    x = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


class InvertedResidual(nn.Module):
    """torchvision ``shufflenetv2.InvertedResidual``.

    stride 1: split the channels in halves, keep the first, run ``branch2`` on
    the second; stride > 1: ``branch1`` and ``branch2`` both on the whole
    input. Then concatenate and shuffle with 2 groups.
    """

    oup: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch = self.oup // 2
        if self.stride == 1:
            half = -(-x.shape[-1] // 2)  # torch.chunk: the first chunk takes the ceiling
            x1, x2 = x[..., :half], x[..., half:]
            out = jnp.concatenate([x1, self._branch2(x2, branch)], axis=-1)
        else:
            out = jnp.concatenate([self._branch1(x, branch), self._branch2(x, branch)], axis=-1)
        return channel_shuffle(out, 2)

    def _branch1(self, x: jax.Array, branch: int) -> jax.Array:
        inp = x.shape[-1]
        x = layers.conv(inp, 3, self.stride, 1, groups=inp, bias=False, name="branch1_0")(x)
        x = layers.BatchNorm(name="branch1_1")(x)
        x = layers.conv(branch, 1, bias=False, name="branch1_2")(x)
        x = layers.BatchNorm(name="branch1_3")(x)
        return layers.Activation("ReLU", name="branch1_4")(x)

    def _branch2(self, x: jax.Array, branch: int) -> jax.Array:
        x = layers.conv(branch, 1, bias=False, name="branch2_0")(x)
        x = layers.Activation("ReLU", name="branch2_2")(layers.BatchNorm(name="branch2_1")(x))
        x = layers.conv(branch, 3, self.stride, 1, groups=branch, bias=False, name="branch2_3")(x)
        x = layers.BatchNorm(name="branch2_4")(x)
        x = layers.conv(branch, 1, bias=False, name="branch2_5")(x)
        return layers.Activation("ReLU", name="branch2_7")(layers.BatchNorm(name="branch2_6")(x))


class ShuffleNetV2(nn.Module):
    """torchvision ``ShuffleNetV2`` on NHWC images; returns logits ``[n, num_classes]``."""

    stages_repeats: Sequence[int] = (4, 8, 4)
    stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024)
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = self.stages_out_channels
        x = layers.conv(channels[0], 3, 2, 1, bias=False, name="conv1_0")(x)
        x = layers.Activation("ReLU", name="conv1_2")(layers.BatchNorm(name="conv1_1")(x))
        x = layers.max_pool(x, 3, 2, 1)  # maxpool
        stages = zip(self.stages_repeats, channels[1:4], strict=True)
        for stage, (repeats, out) in enumerate(stages, start=2):
            for i in range(repeats):
                x = InvertedResidual(out, 2 if i == 0 else 1, name=f"stage{stage}_{i}")(x)
        x = layers.conv(channels[-1], 1, bias=False, name="conv5_0")(x)
        x = layers.Activation("ReLU", name="conv5_2")(layers.BatchNorm(name="conv5_1")(x))
        x = jnp.mean(x, axis=(1, 2))  # globalpool: x.mean([2, 3])
        return nn.Dense(self.num_classes, name="fc")(x)


_PRESETS = {
    "shufflenet_v2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenet_v2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenet_v2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenet_v2_x2_0": (24, 244, 488, 976, 2048),
}

for _name, _channels in _PRESETS.items():
    registry.register(
        _name,
        "shufflenet",
        functools.partial(ShuffleNetV2, stages_repeats=(4, 8, 4), stages_out_channels=_channels),
        torch_class="ShuffleNetV2",
    )
