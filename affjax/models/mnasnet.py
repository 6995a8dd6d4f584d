"""MNASNet B1 (torchvision ``mnasnet.py``) in Flax.

torchvision keeps the whole network in one ``Sequential``, ``layers``: a stem
(conv, BN, ReLU, depthwise conv, BN, ReLU, conv, BN at ``layers.0``-``layers.7``),
six stacks of inverted residuals (``layers.8``-``layers.13``, each a
``Sequential`` of blocks whose own ``layers`` hold conv/BN/ReLU x2 + conv/BN),
then conv/BN/ReLU (``layers.14``-``layers.16``). The Flax paths follow it:
torch's ``layers.9.1.layers.5`` is ``("layers_9", "1", "layers_5")``.

BatchNorm eps is torch's default 1e-5 (torchvision only changes the momentum,
which eval ignores). Dropout is the identity in eval and not ported.

Checkpoints saved before torchvision's MNASNet version 2 (``mnasnet0_5``'s
``IMAGENET1K_V1`` among them) load into a model whose stem has the unscaled
widths 32 and 16 for every ``alpha``; torchvision swaps that stem in while
loading, and ``v1_stem=True`` does the same here (read off the torch instance).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["MNASNet", "Stack", "get_depths"]


def _round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def get_depths(alpha: float) -> list[int]:
    """torchvision's ``_get_depths``: the 8 stage widths scaled by ``alpha``."""
    return [_round_to_multiple_of(d * alpha, 8) for d in (32, 16, 24, 40, 80, 96, 192, 320)]


class InvertedResidual(nn.Module):
    """torchvision ``mnasnet._InvertedResidual``: 1x1 expand, kxk depthwise, 1x1 project."""

    out_ch: int
    kernel_size: int
    stride: int
    expansion_factor: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_ch = x.shape[-1]
        mid = in_ch * self.expansion_factor
        k = self.kernel_size
        out = layers.conv(mid, 1, bias=False, name="layers_0")(x)
        out = layers.Activation("ReLU", name="layers_2")(layers.BatchNorm(name="layers_1")(out))
        out = layers.conv(mid, k, self.stride, k // 2, groups=mid, bias=False, name="layers_3")(out)
        out = layers.Activation("ReLU", name="layers_5")(layers.BatchNorm(name="layers_4")(out))
        out = layers.conv(self.out_ch, 1, bias=False, name="layers_6")(out)
        out = layers.BatchNorm(name="layers_7")(out)
        return out + x if in_ch == self.out_ch and self.stride == 1 else out


class Stack(nn.Module):
    """torchvision ``mnasnet._stack``: a ``Sequential`` of blocks named ``"0"``, ``"1"``..."""

    out_ch: int
    kernel_size: int
    stride: int
    expansion_factor: int
    repeats: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.repeats):
            x = InvertedResidual(
                self.out_ch,
                self.kernel_size,
                self.stride if i == 0 else 1,
                self.expansion_factor,
                name=str(i),
            )(x)
        return x


# (kernel, stride, expansion, repeats) of the six stacks, as in torchvision.
_STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))


class MNASNet(nn.Module):
    """torchvision ``MNASNet`` on NHWC images; returns logits ``[n, num_classes]``."""

    alpha: float = 1.0
    num_classes: int = 1000
    v1_stem: bool = False  # a version-1 checkpoint: stem widths 32, 16 whatever alpha

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        depths = get_depths(self.alpha)
        stem, stem_out = (32, 16) if self.v1_stem else (depths[0], depths[1])
        x = layers.conv(stem, 3, 2, 1, bias=False, name="layers_0")(x)
        x = layers.Activation("ReLU", name="layers_2")(layers.BatchNorm(name="layers_1")(x))
        x = layers.conv(stem, 3, 1, 1, groups=stem, bias=False, name="layers_3")(x)
        x = layers.Activation("ReLU", name="layers_5")(layers.BatchNorm(name="layers_4")(x))
        x = layers.conv(stem_out, 1, bias=False, name="layers_6")(x)
        x = layers.BatchNorm(name="layers_7")(x)
        for i, (k, s, e, r) in enumerate(_STACKS):
            x = Stack(depths[i + 2], k, s, e, r, name=f"layers_{i + 8}")(x)
        x = layers.conv(1280, 1, bias=False, name="layers_14")(x)
        x = layers.Activation("ReLU", name="layers_16")(layers.BatchNorm(name="layers_15")(x))
        x = jnp.mean(x, axis=(1, 2))  # x.mean([2, 3])
        # classifier.0 is Dropout: the identity in eval.
        return nn.Dense(self.num_classes, name="classifier_1")(x)


def _from_torch(model) -> dict:
    # torchvision sets ``_version = 1`` on an instance whose stem it replaced
    # while loading an old checkpoint (only done when alpha != 1).
    return {"v1_stem": True} if getattr(model, "_version", 2) == 1 else {}


for _name, _alpha in (("mnasnet0_5", 0.5), ("mnasnet0_75", 0.75), ("mnasnet1_0", 1.0),
                      ("mnasnet1_3", 1.3)):  # fmt: skip
    registry.register(
        _name,
        "mnasnet",
        functools.partial(MNASNet, alpha=_alpha),
        torch_class="MNASNet",
        from_torch=_from_torch,
    )
