"""MaxViT (torchvision ``maxvit.py``) in Flax.

Submodules carry torchvision's names, e.g. torch's
``blocks.0.layers.1.layers.window_attention.mlp_layer.2`` (a GELU) is the Flax
path ``blocks_0/layers_1/layers/window_attention/mlp_layer/2``.

Activation call sites (all module calls, none under a path component
``attn``, so the reference hooks every one): the stem's GELU; per MaxViT
layer, MBConv's two GELUs and its squeeze-excitation SiLU and Sigmoid (NCHW
in torch), then the MLP GELU of the window and of the grid attention; the
classifier's Tanh. The attention's softmax is ``F.softmax`` inside
``attn_layer.1`` and is not a call site. The attention layers hold tokens as
``[B, G, P, C]`` (G windows of P = 49 positions) in torch as here, so the MLP
GELU is ``torch_layout="same"`` and the reference reduction keeps G.

BatchNorms have eps 1e-3, LayerNorms torch's default 1e-5. The attention
scales keys by ``feat_dim ** -0.5`` (not the head dim), as torchvision does.
The ``relative_position_index`` buffer is derived here
(:func:`relative_position_index`), not converted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import layers, registry

__all__ = ["MBConv", "MaxVit", "PartitionAttentionLayer", "relative_position_index"]

_BN_EPS = 1e-3


def relative_position_index(height: int, width: int) -> np.ndarray:
    """torchvision's ``_get_relative_position_index``: ``[hw, hw]`` rows of the bias table."""
    coords = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"))
    flat = coords.reshape(2, -1)
    rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)
    rel[:, :, 0] += height - 1
    rel[:, :, 1] += width - 1
    rel[:, :, 0] *= 2 * width - 1
    return rel.sum(-1)


class _MBConvLayers(nn.Module):
    """``MBConv.layers``: pre_norm, conv_a, conv_b, squeeze_excitation, conv_c."""

    mid_channels: int
    sqz_channels: int
    out_channels: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.BatchNorm(epsilon=_BN_EPS, name="pre_norm")(x)
        x = layers.ConvNormActivation(
            self.mid_channels, 1, padding=0, activation="GELU", eps=_BN_EPS, name="conv_a"
        )(x)
        x = layers.ConvNormActivation(
            self.mid_channels,
            3,
            self.stride,
            padding=1,
            groups=self.mid_channels,
            activation="GELU",
            eps=_BN_EPS,
            name="conv_b",
        )(x)
        x = layers.SqueezeExcitation(
            self.sqz_channels, activation_kind="SiLU", name="squeeze_excitation"
        )(x)
        return layers.conv(self.out_channels, 1, name="conv_c")(x)


class MBConv(nn.Module):
    """torchvision ``MBConv`` in eval mode (stochastic depth is the identity)."""

    out_channels: int
    stride: int = 1
    expansion_ratio: float = 4
    squeeze_ratio: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        res = x
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            # proj = [AvgPool2d(3, stride, 1)] + [Conv2d 1x1] when strided, else [Conv2d 1x1]
            if self.stride == 2:
                res = layers.avg_pool(res, 3, self.stride, 1)
            name = "proj_1" if self.stride == 2 else "proj_0"
            res = layers.conv(self.out_channels, 1, name=name)(res)
        out = _MBConvLayers(
            int(self.out_channels * self.expansion_ratio),
            int(self.out_channels * self.squeeze_ratio),
            self.out_channels,
            self.stride,
            name="layers",
        )(x)
        return res + out


class _RelativePositionalMultiHeadAttention(nn.Module):
    """Attention in each of G groups of P positions, with a learned relative position bias."""

    feat_dim: int
    head_dim: int
    size: int  # partition side; P = size ** 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, g, p, d = x.shape
        heads, dh = self.feat_dim // self.head_dim, self.head_dim
        qkv = nn.Dense(3 * heads * dh, name="to_qkv")(x)
        q, k, v = (
            t.reshape(b, g, p, heads, dh).transpose(0, 1, 3, 2, 4) for t in jnp.split(qkv, 3, -1)
        )
        k = k * self.feat_dim**-0.5  # torchvision scales by the feature, not the head, dim
        dot = jnp.einsum("bghid,bghjd->bghij", q, k)
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            ((2 * self.size - 1) ** 2, heads),
        )
        index = relative_position_index(self.size, self.size).reshape(-1)
        bias = table[index].reshape(p, p, heads).transpose(2, 0, 1)  # [H, P, P]
        attn = jax.nn.softmax(dot + bias, axis=-1)  # F.softmax: not a call site
        out = jnp.einsum("bghij,bghjd->bghid", attn, v)
        out = out.transpose(0, 1, 3, 2, 4).reshape(b, g, p, d)
        return nn.Dense(self.feat_dim, name="merge")(out)


class _AttnLayer(nn.Module):
    """``attn_layer``: LayerNorm, attention, (Dropout)."""

    dim: int
    head_dim: int
    partition_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.LayerNorm(name="0")(x)
        return _RelativePositionalMultiHeadAttention(
            self.dim, self.head_dim, self.partition_size, name="1"
        )(x)


class _MLPLayer(nn.Module):
    """``mlp_layer``: LayerNorm, Linear, GELU, Linear, (Dropout)."""

    dim: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.LayerNorm(name="0")(x)
        x = nn.Dense(self.dim * self.mlp_ratio, name="1")(x)
        x = layers.Activation("GELU", torch_layout="same", name="2")(x)
        return nn.Dense(self.dim, name="3")(x)


def _partition(x: jax.Array, p: int) -> jax.Array:
    """``WindowPartition``: NHWC -> ``[B, (H/p)(W/p), p*p, C]``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p, c)


def _departition(x: jax.Array, p: int, hp: int, wp: int) -> jax.Array:
    """``WindowDepartition``: ``[B, hp wp, p*p, C]`` -> NHWC."""
    b, _, _, c = x.shape
    x = x.reshape(b, hp, wp, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp * p, wp * p, c)


class PartitionAttentionLayer(nn.Module):
    """torchvision ``PartitionAttentionLayer``: block ("window") or grid attention, then MLP.

    torch fixes the grid size at construction; here it is the input's, so the
    input must give the same partitions (its height and width divisible by
    the partition count).
    """

    dim: int
    head_dim: int
    partition_size: int
    partition_type: str  # "window" or "grid"
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.partition_type not in ("window", "grid"):
            raise ValueError("partition_type must be either 'grid' or 'window'")
        h, w = x.shape[1:3]
        n_partitions = h // self.partition_size
        p = self.partition_size if self.partition_type == "window" else n_partitions
        if p == 0 or h % p or w % p:
            raise ValueError(
                f"feature map {h}x{w} is not divisible into {self.partition_type} partitions "
                f"of size {self.partition_size}; MaxViT-T needs 224x224 images"
            )
        x = _partition(x, p)
        if self.partition_type == "grid":
            x = jnp.swapaxes(x, -2, -3)
        x = x + _AttnLayer(self.dim, self.head_dim, self.partition_size, name="attn_layer")(x)
        x = x + _MLPLayer(self.dim, self.mlp_ratio, name="mlp_layer")(x)
        if self.partition_type == "grid":
            x = jnp.swapaxes(x, -2, -3)
        return _departition(x, p, h // p, w // p)


class _MaxVitLayerBody(nn.Module):
    """``MaxVitLayer.layers``: MBconv, window_attention, grid_attention."""

    out_channels: int
    stride: int
    head_dim: int
    partition_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = MBConv(self.out_channels, self.stride, name="MBconv")(x)
        for kind in ("window", "grid"):
            x = PartitionAttentionLayer(
                self.out_channels,
                self.head_dim,
                self.partition_size,
                kind,
                name=f"{kind}_attention",
            )(x)
        return x


class _MaxVitLayer(nn.Module):
    out_channels: int
    stride: int
    head_dim: int
    partition_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _MaxVitLayerBody(
            self.out_channels, self.stride, self.head_dim, self.partition_size, name="layers"
        )(x)


class _MaxVitBlock(nn.Module):
    """``MaxVitBlock``: its ``layers`` ModuleList, the first layer strided."""

    out_channels: int
    n_layers: int
    head_dim: int
    partition_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.n_layers):
            x = _MaxVitLayer(
                self.out_channels,
                2 if i == 0 else 1,
                self.head_dim,
                self.partition_size,
                name=f"layers_{i}",
            )(x)
        return x


class MaxVit(nn.Module):
    """torchvision ``MaxVit`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        stem_channels: width of the two stem convolutions.
        block_channels, block_layers: width and number of MaxViT layers per block.
        head_dim: attention head width.
        partition_size: window side (7); every block's input side must be divisible by it.
    """

    stem_channels: int
    block_channels: Sequence[int]
    block_layers: Sequence[int]
    head_dim: int
    partition_size: int = 7
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.ConvNormActivation(
            self.stem_channels, 3, 2, activation="GELU", eps=_BN_EPS, name="stem_0"
        )(x)
        x = layers.ConvNormActivation(
            self.stem_channels, 3, 1, activation=None, norm=False, name="stem_1"
        )(x)
        for i, (channels, n) in enumerate(zip(self.block_channels, self.block_layers, strict=True)):
            x = _MaxVitBlock(channels, n, self.head_dim, self.partition_size, name=f"blocks_{i}")(x)
        x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1) + Flatten
        x = layers.LayerNorm(name="classifier_2")(x)
        x = nn.Dense(self.block_channels[-1], name="classifier_3")(x)
        x = layers.Activation("Tanh", name="classifier_4")(x)
        return nn.Dense(self.num_classes, use_bias=False, name="classifier_5")(x)


def _config_from_torch(model) -> dict:
    """MaxVit's architecture read off a torchvision instance (attribute reads only)."""
    blocks = list(model.blocks)
    first = blocks[0].layers[0].layers.window_attention
    return {
        "stem_channels": model.stem[0][0].out_channels,
        "block_channels": tuple(
            b.layers[0].layers.MBconv.layers.conv_c.out_channels for b in blocks
        ),
        "block_layers": tuple(len(b.layers) for b in blocks),
        "head_dim": first.head_dim,
        "partition_size": model.partition_size,
        # the last Linear has no bias, which the converter reads num_classes from
        "num_classes": model.classifier[-1].out_features,
    }


registry.register(
    "maxvit_t",
    "maxvit",
    functools.partial(
        MaxVit,
        stem_channels=64,
        block_channels=(64, 128, 256, 512),
        block_layers=(2, 2, 5, 2),
        head_dim=32,
        partition_size=7,
    ),
    torch_class="MaxVit",
    from_torch=_config_from_torch,
)
