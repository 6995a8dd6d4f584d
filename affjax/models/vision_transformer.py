"""Vision Transformer (torchvision ``vision_transformer.py``) in Flax.

Tokens are ``[n, L, D]`` in both frameworks (torch's encoder is ``batch_first``),
so the GELU call sites use ``torch_layout="same"``: the reference reduction
averages the last axis and keeps the ``L`` tokens, ``reduce="channels"``
averages the tokens and keeps the ``D`` features.

Names follow torchvision: ``encoder.layers.encoder_layer_3.mlp.1`` is the GELU
of block 3 (``MLPBlock`` is a ``torchvision.ops.MLP``: ``0`` Linear, ``1`` GELU,
``2`` Dropout, ``3`` Linear, ``4`` Dropout). torch's own names end in
``_<digits>`` there (``encoder_layer_3``, ``ln_1``), so each block's submodules
are named with their dotted torch path (``"layers.encoder_layer_3.ln_1"``),
which :func:`~affjax.models.registry.torch_path` keeps verbatim.
``self_attention`` keeps ``torch.nn.MultiheadAttention``'s parameters
(``in_proj_weight`` ``[3D, D]``, ``in_proj_bias``, ``out_proj``) so conversion
is by name. LayerNorm eps is 1e-6.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from affjax.models import layers, registry

__all__ = ["MultiheadAttention", "VisionTransformer", "encoder_block"]

# torch's LayerNorm computes the variance as mean((x - mean)^2); Flax's default
# E[x^2] - E[x]^2 loses float32 digits on the residual stream's offsets.
_LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False)


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention(D, num_heads, batch_first=True)``, self-attention, eval.

    ``in_proj_weight`` is kept in torch's ``[3D, D]`` layout (q, k, v stacked)
    so the converter takes it verbatim; ``out_proj`` is a Linear.
    """

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, length, d = x.shape
        head_dim = d // self.num_heads
        w = self.param("in_proj_weight", nn.initializers.xavier_uniform(), (3 * d, d))
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        qkv = jnp.einsum("nld,ed->nle", x, w) + b
        q, k, v = (
            t.reshape(n, length, self.num_heads, head_dim) for t in jnp.split(qkv, 3, axis=-1)
        )
        logits = jnp.einsum("nqhc,nkhc->nhqk", q, k) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits, axis=-1)  # an F-level softmax in torch: no call site
        out = jnp.einsum("nhqk,nkhc->nqhc", weights, v).reshape(n, length, d)
        return nn.Dense(d, name="out_proj")(out)


class MLPBlock(nn.Module):
    """torchvision's ``MLPBlock``: Linear ``0``, GELU ``1``, (Dropout ``2``), Linear ``3``."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim, name="0")(x)
        x = layers.Activation("GELU", torch_layout="same", name="1")(x)
        return nn.Dense(d, name="3")(x)


def encoder_block(x: jax.Array, prefix: str, num_heads: int, mlp_dim: int) -> jax.Array:
    """torchvision's ``EncoderBlock``: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    A function, not a module: its submodules are created in the calling
    :class:`Encoder` under dotted torch paths (``f"{prefix}.ln_1"``), because
    torch's names ``encoder_layer_0``, ``ln_1`` end in ``_<digits>``, which
    :func:`~affjax.models.registry.torch_path` would read as an index.
    """
    y = _LayerNorm(name=f"{prefix}.ln_1")(x)
    y = MultiheadAttention(num_heads, name=f"{prefix}.self_attention")(y)
    x = x + y
    y = _LayerNorm(name=f"{prefix}.ln_2")(x)
    return x + MLPBlock(mlp_dim, name=f"{prefix}.mlp")(y)


class Encoder(nn.Module):
    num_layers: int
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]), x.dtype
        )
        x = x + pos
        for i in range(self.num_layers):
            x = encoder_block(x, f"layers.encoder_layer_{i}", self.num_heads, self.mlp_dim)
        return _LayerNorm(name="ln")(x)


class Heads(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="head")(x)


class VisionTransformer(nn.Module):
    """torchvision ``VisionTransformer`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        image_size: the side torch was built for; it fixes ``pos_embedding``'s
            length, and other sizes are rejected as torch rejects them.
    """

    image_size: int
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, _ = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"this ViT was built for {self.image_size}x{self.image_size} images, got {h}x{w}"
            )
        p = self.patch_size
        x = layers.conv(self.hidden_dim, p, p, name="conv_proj")(x)
        # [n, h/p, w/p, D] -> [n, L, D], patches row-major like torch's reshape + permute
        x = x.reshape(n, -1, self.hidden_dim)
        token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim), x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(token, (n, 1, self.hidden_dim)), x], axis=1)
        x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, name="encoder")(x)
        return Heads(self.num_classes, name="heads")(x[:, 0])


_PRESETS = {
    # name: (patch_size, num_layers, num_heads, hidden_dim, mlp_dim)
    "vit_b_16": (16, 12, 12, 768, 3072),
    "vit_b_32": (32, 12, 12, 768, 3072),
    "vit_l_16": (16, 24, 16, 1024, 4096),
    "vit_l_32": (32, 24, 16, 1024, 4096),
    "vit_h_14": (14, 32, 16, 1280, 5120),
}

for _name, (_patch, _layers, _heads, _hidden, _mlp) in _PRESETS.items():
    registry.register(
        _name,
        "vision_transformer",
        functools.partial(
            VisionTransformer,
            # 224: torchvision's random init and most weights; vit_h_14's DEFAULT
            # (SWAG end-to-end) weights are 518, vit_b_16/vit_l_16's SWAG ones 384/512.
            image_size=224,
            patch_size=_patch,
            num_layers=_layers,
            num_heads=_heads,
            hidden_dim=_hidden,
            mlp_dim=_mlp,
        ),
        torch_class="VisionTransformer",
        from_torch=lambda m: {"image_size": m.image_size},
    )
