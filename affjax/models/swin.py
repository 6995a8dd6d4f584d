"""Swin Transformer V1 and V2 (torchvision ``swin_transformer.py``) in Flax.

torchvision's Swin is channels-last: after the patch embedding (``features.0``:
Conv2d, Permute, LayerNorm) every tensor is ``[N, H, W, C]`` in torch too, so
the MLP's GELU call sites use ``torch_layout="same"``: the reference reduction
averages torch's last two axes (W, C) and keeps H.

Submodules nest under torch's names: ``features_1`` is the stage
``features.1`` and its blocks are ``"0"``, ``"1"``..., so the GELU of
``features.1.0.mlp.1`` is the Flax path ``("features_1", "0", "mlp_1")``.
The reference skips every module under a path component ``attn``; nothing
inside :class:`ShiftedWindowAttention` (the softmax, V2's ``cpb_mlp`` ReLU) is
a call site. The derived buffers ``relative_position_index`` and
``relative_coords_table`` are recomputed here from the window size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from affjax.models import layers, registry

__all__ = [
    "PatchMerging",
    "ShiftedWindowAttention",
    "SwinTransformer",
    "SwinTransformerBlock",
    "relative_coords_table",
    "relative_position_index",
    "shift_mask",
]

#: ``torch.nn.LayerNorm(eps=1e-5)``; the two-pass variance, as torch computes it.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5, use_fast_variance=False)


# --------------------------------------------------------------------------- derived buffers


def relative_position_index(window: tuple[int, int]) -> np.ndarray:
    """torchvision's ``relative_position_index`` buffer, ``[Wh*Ww * Wh*Ww]`` int."""
    wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # [N, N, 2]
    rel = rel + np.array([wh - 1, ww - 1])
    return (rel[..., 0] * (2 * ww - 1) + rel[..., 1]).reshape(-1)


def relative_coords_table(window: tuple[int, int]) -> np.ndarray:
    """V2's ``relative_coords_table`` buffer, ``[1, 2Wh-1, 2Ww-1, 2]`` float32.

    Log-spaced relative coordinates, ``sign(t) log2(|t| + 1) / 3`` with ``t``
    scaled to [-8, 8]; float32 throughout like torch's buffer.
    """
    wh, ww = window
    h = np.arange(-(wh - 1), wh, dtype=np.float32) / np.float32(wh - 1)
    w = np.arange(-(ww - 1), ww, dtype=np.float32) / np.float32(ww - 1)
    table = np.stack(np.meshgrid(h, w, indexing="ij"), axis=-1)[None] * np.float32(8)
    return (np.sign(table) * np.log2(np.abs(table) + np.float32(1)) / np.float32(3)).astype(
        np.float32
    )


def shift_mask(pad_hw: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]):
    """Additive attention mask of the shifted windows, ``[num_windows, N, N]``.

    Tokens of one window that came from different regions of the rolled map
    get -100 (torchvision's value, not -inf), others 0.
    """
    (ph, pw), (wh, ww), (sh, sw) = pad_hw, window, shift
    region = np.zeros((ph, pw), np.float32)
    count = 0
    for h0, h1 in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w0, w1 in ((0, -ww), (-ww, -sw), (-sw, None)):
            region[h0:h1, w0:w1] = count
            count += 1
    region = region.reshape(ph // wh, wh, pw // ww, ww).transpose(0, 2, 1, 3)
    region = region.reshape(-1, wh * ww)
    diff = region[:, None, :] - region[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))


# --------------------------------------------------------------------------- blocks


class _Linear(nn.Module):
    """``torch.nn.Linear`` with V2's zeroed key bias (``qkv.bias[C:2C] = 0`` at each call)."""

    features: int
    zero_key_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.zero_key_bias:
            length = self.features // 3
            bias = bias.at[length : 2 * length].set(0.0)
        return x @ kernel + bias


def _normalize(x: jax.Array) -> jax.Array:
    """``F.normalize(x, dim=-1)``: ``x / max(||x||, 1e-12)``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ShiftedWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` (V1) and ``ShiftedWindowAttentionV2``.

    V1: scaled dot product plus a learned bias table indexed by relative
    position. V2: cosine attention scaled by ``exp(min(logit_scale, log 100))``
    plus ``16 sigmoid(cpb_mlp(relative_coords_table))``, and the key third of
    the qkv bias zeroed.

    Attributes:
        num_heads: attention heads.
        window_size: ``(Wh, Ww)``.
        shift_size: ``(Sh, Sw)``; a shift is dropped along an axis that the
            (padded) map fits in one window, as in torch.
        v2: the V2 variant.
    """

    num_heads: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    v2: bool = False

    def _bias(self) -> jax.Array:
        """Relative position bias ``[1, heads, N, N]``."""
        wh, ww = self.window_size
        n = wh * ww
        index = relative_position_index(self.window_size)
        if self.v2:
            hidden = nn.Dense(512, name="cpb_mlp_0")(
                jnp.asarray(relative_coords_table(self.window_size))
            )
            table = nn.Dense(self.num_heads, use_bias=False, name="cpb_mlp_2")(nn.relu(hidden))
            table = table.reshape(-1, self.num_heads)
        else:
            table = self.param(
                "relative_position_bias_table",
                nn.initializers.truncated_normal(0.02),
                ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
            )
        bias = table[index].reshape(n, n, -1).transpose(2, 0, 1)[None]
        return 16.0 * nn.sigmoid(bias) if self.v2 else bias

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        pad_b, pad_r = (wh - h % wh) % wh, (ww - w % ww) % ww
        x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        ph, pw = h + pad_b, w + pad_r
        sh = 0 if wh >= ph else self.shift_size[0]
        sw = 0 if ww >= pw else self.shift_size[1]
        shifted = sh + sw > 0
        if shifted:
            x = jnp.roll(x, (-sh, -sw), axis=(1, 2))

        num_windows = (ph // wh) * (pw // ww)
        x = x.reshape(b, ph // wh, wh, pw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b * num_windows, wh * ww, c)
        n = wh * ww

        qkv = _Linear(3 * c, zero_key_bias=self.v2, name="qkv")(x)
        qkv = qkv.reshape(b * num_windows, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.v2:
            attn = _normalize(q) @ jnp.swapaxes(_normalize(k), -2, -1)
            logit_scale = self.param(
                "logit_scale",
                lambda _, shape: jnp.full(shape, math.log(10.0), jnp.float32),
                (heads, 1, 1),
            )
            attn = attn * jnp.exp(jnp.minimum(logit_scale, math.log(100.0)))
        else:
            q = q * (c // heads) ** -0.5
            attn = q @ jnp.swapaxes(k, -2, -1)
        attn = attn + self._bias()

        if shifted:
            mask = jnp.asarray(shift_mask((ph, pw), (wh, ww), (sh, sw)))
            attn = attn.reshape(b, num_windows, heads, n, n) + mask[None, :, None]
            attn = attn.reshape(-1, heads, n, n)

        attn = jax.nn.softmax(attn, axis=-1)  # F.softmax, under `attn`: not a call site
        x = (attn @ v).transpose(0, 2, 1, 3).reshape(b * num_windows, n, c)
        x = nn.Dense(c, name="proj")(x)

        x = x.reshape(b, ph // wh, pw // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, ph, pw, c)
        if shifted:
            x = jnp.roll(x, (sh, sw), axis=(1, 2))
        return x[:, :h, :w, :]


class SwinTransformerBlock(nn.Module):
    """torchvision's ``SwinTransformerBlock`` (``v2=False``) and ``SwinTransformerBlockV2``.

    V1: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``; V2 normalises after:
    ``x + norm1(attn(x))``, ``x + norm2(mlp(x))``. The MLP is torchvision's
    ``ops.MLP`` Sequential: ``0`` Linear, ``1`` GELU, ``2`` Dropout, ``3``
    Linear, ``4`` Dropout; stochastic depth and dropout are identity in eval.
    """

    num_heads: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    mlp_ratio: float = 4.0
    v2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        attn = ShiftedWindowAttention(
            self.num_heads, self.window_size, self.shift_size, v2=self.v2, name="attn"
        )
        norm1, norm2 = LayerNorm(name="norm1"), LayerNorm(name="norm2")

        def mlp(t):
            t = nn.Dense(int(dim * self.mlp_ratio), name="mlp_0")(t)
            t = layers.Activation("GELU", torch_layout="same", name="mlp_1")(t)
            return nn.Dense(dim, name="mlp_3")(t)

        if self.v2:
            x = x + norm1(attn(x))
            return x + norm2(mlp(x))
        x = x + attn(norm1(x))
        return x + mlp(norm2(x))


class PatchMerging(nn.Module):
    """torchvision's ``PatchMerging`` (norm, then reduction) and ``PatchMergingV2`` (reverse).

    The 2x2 neighbours are concatenated in torch's order: ``x[0::2, 0::2]``,
    ``x[1::2, 0::2]``, ``x[0::2, 1::2]``, ``x[1::2, 1::2]`` (H first), after
    zero-padding odd H or W at the bottom/right.
    """

    v2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w, c = x.shape[-3:]
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        reduction = nn.Dense(2 * c, use_bias=False, name="reduction")
        if self.v2:
            return LayerNorm(name="norm")(reduction(x))
        return reduction(LayerNorm(name="norm")(x))


class _PatchEmbed(nn.Module):
    """``features.0``: Conv2d (``0``), Permute (``1``, a no-op on NHWC), LayerNorm (``2``)."""

    embed_dim: int
    patch_size: tuple[int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.conv(self.embed_dim, self.patch_size, self.patch_size, name="0")(x)
        return LayerNorm(name="2")(x)


class _Stage(nn.Module):
    """``features.<2i+1>``: a Sequential of blocks named ``"0"``, ``"1"``..."""

    depth: int
    num_heads: int
    window_size: tuple[int, int]
    mlp_ratio: float
    v2: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.depth):
            shift = (0, 0) if j % 2 == 0 else tuple(w // 2 for w in self.window_size)
            x = SwinTransformerBlock(
                self.num_heads, self.window_size, shift, self.mlp_ratio, self.v2, name=str(j)
            )(x)
        return x


class SwinTransformer(nn.Module):
    """torchvision ``SwinTransformer`` on NHWC images; returns logits ``[n, num_classes]``.

    Any image size works: windows pad the map to a multiple of the window and
    patch merging pads odd sizes, as in torch.
    """

    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    window_size: tuple[int, int] = (7, 7)
    patch_size: tuple[int, int] = (4, 4)
    mlp_ratio: float = 4.0
    v2: bool = False
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _PatchEmbed(self.embed_dim, tuple(self.patch_size), name="features_0")(x)
        index = 1
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            x = _Stage(
                depth, heads, tuple(self.window_size), self.mlp_ratio, self.v2,
                name=f"features_{index}",
            )(x)  # fmt: skip
            index += 1
            if i < len(self.depths) - 1:
                x = PatchMerging(self.v2, name=f"features_{index}")(x)
                index += 1
        x = LayerNorm(name="norm")(x)
        x = jnp.mean(x, axis=(1, 2))  # permute + AdaptiveAvgPool2d(1) + flatten
        return nn.Dense(self.num_classes, name="head")(x)


_PRESETS = {
    # name: (embed_dim, depths, num_heads, window, v2)
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), (7, 7), False),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), (7, 7), False),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), (7, 7), False),
    "swin_v2_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), (8, 8), True),
    "swin_v2_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), (8, 8), True),
    "swin_v2_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), (8, 8), True),
}

for _name, (_dim, _depths, _heads, _window, _v2) in _PRESETS.items():
    registry.register(
        _name,
        "swin",
        functools.partial(
            SwinTransformer,
            embed_dim=_dim,
            depths=_depths,
            num_heads=_heads,
            window_size=_window,
            v2=_v2,
        ),
        torch_class="SwinTransformer",
    )
