"""Torch-faithful Flax building blocks and the activation call site.

Arrays are NHWC; every helper reproduces the matching ``torch.nn`` operator on
the NCHW tensor torch would hold, so converted weights give the same logits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from affjax import metrics

__all__ = [
    "ACTIVATION_CLASSES",
    "COLLECTION",
    "Activation",
    "BasicConv2d",
    "BatchNorm",
    "ConvNormActivation",
    "LayerNorm",
    "SqueezeExcitation",
    "adaptive_avg_pool",
    "reduce_record",
    "reference_classes",
    "avg_pool",
    "conv",
    "flatten_nchw",
    "max_pool",
    "transform_input",
]

#: Flax collection the activation call sites ``sow`` their records into.
COLLECTION = "affinity"

#: torch's activation classes the reference hooks (``torch.nn.Threshold`` excluded).
ACTIVATION_CLASSES = (
    "ReLU", "RReLU", "Hardtanh", "ReLU6", "Sigmoid", "Hardsigmoid", "Tanh", "SiLU", "Mish",
    "Hardswish", "ELU", "CELU", "SELU", "GLU", "GELU", "Hardshrink", "LeakyReLU", "LogSigmoid",
    "Softplus", "Softshrink", "PReLU", "Softsign", "Tanhshrink", "Softmin", "Softmax",
    "Softmax2d", "LogSoftmax",
)  # fmt: skip

#: Hooked torch classes that subclass another hooked class. The reference keys a
#: module by every class it is an instance of, so each ``ReLU6`` call (a
#: ``Hardtanh`` subclass) is recorded under two keys, ``..._Hardtanh`` and ``..._ReLU6``.
_TORCH_BASES: dict[str, tuple[str, ...]] = {"ReLU6": ("Hardtanh",)}


def reference_classes(kind: str) -> tuple[str, ...]:
    """The reference's keys' class names for a module of class ``kind``, in its order."""
    classes = {kind, *_TORCH_BASES.get(kind, ())}
    return tuple(c for c in ACTIVATION_CLASSES if c in classes) or (kind,)


_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "ReLU": nn.relu,
    "ReLU6": nn.relu6,
    "Sigmoid": nn.sigmoid,
    "Hardsigmoid": nn.hard_sigmoid,
    "Tanh": jnp.tanh,
    "SiLU": nn.silu,
    "Hardswish": nn.hard_swish,
    "GELU": functools.partial(nn.gelu, approximate=False),  # torch's default is exact erf
}


# --------------------------------------------------------------------------- capture


def _reference_axes(x: jax.Array, torch_layout: str) -> tuple[int, ...]:
    """Axes the reference averages, on the tensor as torch lays it out.

    4-D: torch's last two axes; 3-D: the last; 2-D: none (kept as is).
    ``torch_layout="NCHW"`` says our NHWC array is an NCHW tensor in torch (the
    usual conv case); ``"same"`` that torch holds it in our axis order.
    """
    if x.ndim == 4:
        return (1, 2) if torch_layout == "NCHW" else (2, 3)
    if x.ndim == 3:
        return (2,)
    if x.ndim == 2:
        return ()
    raise ValueError(f"cannot reduce a {x.ndim}-D activation to [n, d]")


def _channel_reduce(x: jax.Array) -> jax.Array:
    """Mean over every axis but batch and (last, channels-last) channel."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


def _per_sample_sparsity(x: jax.Array) -> jax.Array:
    flat = x.reshape(x.shape[0], -1)
    return jnp.mean(jnp.abs(flat) <= metrics.SPARSITY_THRESHOLD, axis=1, dtype=jnp.float32)


def _add_pairs(operands: tuple, axes: tuple[int, ...]) -> tuple:
    """Sums of several same-shape arrays over ``axes`` in one variadic reduction."""
    zeros = tuple(jnp.zeros((), v.dtype) for v in operands)
    return lax.reduce(
        operands, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b, strict=True)), axes
    )


def reduce_record(x: jax.Array, y: jax.Array, axes: tuple[int, ...]) -> dict:
    """``x`` and ``y`` averaged over ``axes``, and the per-sample sparsity of both.

    Shaped for XLA:CPU's reductions, which run at memory speed when they reduce
    one axis or the minor one, and several times slower otherwise:

    * when ``axes`` hold the minor axis (tokens, channels-last torch layouts),
      the two sums and the two counts of entries with ``|v| <= 1e-3`` are one
      variadic reduction over ``axes``;
    * otherwise (NHWC convolutions averaged over ``H, W``, channels kept) the
      sums reduce the first axis of ``axes`` for ``x`` and ``y`` together,
      then the rest on the much smaller result; the counts, which only need a
      per-sample total, reduce the minor axis first.

    On DenseNet-121 at batch 64 (2-core CPU, forward 3.1-3.5 s) that took the cost
    of recording from 1.6-1.7 s (a four-output reduction over ``H, W``) to
    about 0.8 s. Half-precision activations are averaged in float32; counts are
    int32, so exact.
    """
    if not axes or x.shape != y.shape:
        return {
            "x": jnp.mean(x, axis=axes) if axes else x,
            "y": jnp.mean(y, axis=axes) if axes else y,
            "sparsity_x": _per_sample_sparsity(x),
            "sparsity_y": _per_sample_sparsity(y),
        }
    acc = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    axes, minor = tuple(sorted(axes)), x.ndim - 1

    def small(v):
        return (jnp.abs(v) <= metrics.SPARSITY_THRESHOLD).astype(jnp.int32)

    if minor in axes:
        sx, sy, cx, cy = _add_pairs((x.astype(acc), y.astype(acc), small(x), small(y)), axes)
    else:
        sx, sy = _add_pairs((x.astype(acc), y.astype(acc)), axes[:1])
        if len(axes) > 1:  # the first axis is gone: the others move down by one
            sx, sy = _add_pairs((sx, sy), tuple(a - 1 for a in axes[1:]))
        cx, cy = _add_pairs((small(x), small(y)), (minor,))
    per_mean = math.prod(x.shape[a] for a in axes)
    per_sample = math.prod(x.shape[1:])

    def sparsity(c):
        return (jnp.sum(c.reshape(c.shape[0], -1), axis=1) / per_sample).astype(jnp.float32)

    return {
        "x": sx / per_mean,
        "y": sy / per_mean,
        "sparsity_x": sparsity(cx),
        "sparsity_y": sparsity(cy),
    }


class Activation(nn.Module):
    """An activation call site: applies the function and records what it saw.

    When the :data:`COLLECTION` collection is mutable, each call ``sow``-s the
    reduced ``[n, d]`` input and output (never the full tensors) and the
    per-sample sparsity of the unreduced ones. A module called k times records
    k entries, in call order.

    Attributes:
        kind: torch class name (``"ReLU"``...), part of the reference key.
        torch_layout: ``"NCHW"`` when torch holds a 4-D tensor as NCHW (our
            NHWC), ``"same"`` when torch's axis order is ours (channels-last
            blocks, tokens).
        functional: a ``torch.nn.functional`` call in the original model; the
            reference does not see those, signatures skip them unless asked.
        fn: the function, when ``kind`` alone does not determine it.
    """

    kind: str = "ReLU"
    torch_layout: str = "NCHW"
    functional: bool = False
    fn: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fn = self.fn or _FUNCTIONS[self.kind]
        y = fn(x)
        if self.is_mutable_collection(COLLECTION):
            self.sow(COLLECTION, "calls", self.record(x, y))
        return y

    @nn.nowrap
    def record(self, x: jax.Array, y: jax.Array) -> dict:
        """What one call records: the reference reduction (and the channel one where it differs)."""
        record = reduce_record(x, y, _reference_axes(x, self.torch_layout))
        if x.ndim > 2 and not (x.ndim == 4 and self.torch_layout == "NCHW"):
            record["x_channels"] = _channel_reduce(x)
            record["y_channels"] = _channel_reduce(y)
        return record


# --------------------------------------------------------------------------- layers


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    *,
    groups: int = 1,
    dilation: int = 1,
    bias: bool = True,
    name: str | None = None,
) -> nn.Conv:
    """``torch.nn.Conv2d`` as ``flax.linen.Conv`` with torch's explicit padding."""
    ph, pw = _pair(padding)
    return nn.Conv(
        features,
        _pair(kernel_size),
        strides=_pair(stride),
        padding=((ph, ph), (pw, pw)),
        kernel_dilation=_pair(dilation),
        feature_group_count=groups,
        use_bias=bias,
        name=name,
    )


#: ``torch.nn.BatchNorm2d`` in eval mode (running statistics, eps 1e-5).
BatchNorm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


class ConvNormActivation(nn.Module):
    """torchvision's ``Conv2dNormActivation``: a ``Sequential`` of conv, BatchNorm, activation.

    Submodules are named ``"0"``, ``"1"``, ``"2"`` like the ``Sequential``'s
    children (``"1"`` is the activation when there is no norm), so torch's
    ``features.0.2`` is the Flax path ``("features_0", "2")`` and the activation
    call's reference key is ``features.0.2_ReLU6``.

    Attributes:
        features: output channels.
        kernel_size, stride, groups, dilation: as ``Conv2d``.
        padding: ``None`` is torchvision's default ``(k - 1) // 2 * dilation``.
        activation: torch class name of the activation (``"ReLU"``, ``"SiLU"``...)
            or ``None``.
        norm: whether a BatchNorm follows the conv.
        eps: that BatchNorm's eps (1e-5 in torch; 1e-3 in MobileNetV3 and
            EfficientNetV2).
        bias: conv bias; ``None`` is torchvision's default, a bias only without norm.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int | None = None
    groups: int = 1
    dilation: int = 1
    activation: str | None = "ReLU"
    norm: bool = True
    eps: float = 1e-5
    bias: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        padding = (
            (self.kernel_size - 1) // 2 * self.dilation if self.padding is None else self.padding
        )
        bias = (not self.norm) if self.bias is None else self.bias
        x = conv(
            self.features,
            self.kernel_size,
            self.stride,
            padding,
            groups=self.groups,
            dilation=self.dilation,
            bias=bias,
            name="0",
        )(x)
        index = 1
        if self.norm:
            x = BatchNorm(epsilon=self.eps, name="1")(x)
            index = 2
        if self.activation is not None:
            x = Activation(self.activation, name=str(index))(x)
        return x


class SqueezeExcitation(nn.Module):
    """torchvision's ``ops.SqueezeExcitation``: ``x * gate(fc2(act(fc1(mean(x)))))``.

    Both activations are call sites of their own, as the reference hooks them
    (``...se.activation_ReLU``, ``...se.scale_activation_Sigmoid``); they see
    ``[n, 1, 1, c]`` tensors, which reduce to ``[n, c]``.

    Attributes:
        squeeze_channels: width of ``fc1``.
        activation_kind: torch class of ``activation`` (ReLU; SiLU in EfficientNet).
        scale_kind: torch class of ``scale_activation`` (Sigmoid; Hardsigmoid
            in MobileNetV3).
    """

    squeeze_channels: int
    activation_kind: str = "ReLU"
    scale_kind: str = "Sigmoid"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1)
        s = conv(self.squeeze_channels, 1, name="fc1")(s)
        s = Activation(self.activation_kind, name="activation")(s)
        s = conv(x.shape[-1], 1, name="fc2")(s)
        s = Activation(self.scale_kind, name="scale_activation")(s)
        return s * x


def _pool_padding(size: int, k: int, s: int, p: int, ceil_mode: bool) -> tuple[int, int]:
    """(left, right) padding giving torch's output size, ceil_mode included."""
    span = size + 2 * p - k
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # torch: the last window must start inside the input or left padding
    return p, (out - 1) * s + k - size - p


class _Window(NamedTuple):
    window: tuple[int, ...]  # (1, kh, kw, 1)
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # torch's padding plus ceil_mode's overhang
    explicit: tuple[int, int]  # torch's own padding (ph, pw)


def _window(x, kernel_size, stride, padding, ceil_mode) -> _Window:
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    pads = [_pool_padding(x.shape[1 + i], k[i], s[i], p[i], ceil_mode) for i in range(2)]
    return _Window((1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)), p)


def max_pool(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.MaxPool2d`` (padding with -inf, ``ceil_mode``) on NHWC."""
    w = _window(x, kernel_size, stride, padding, ceil_mode)
    return lax.reduce_window(x, -jnp.inf, lax.max, w.window, w.strides, w.padding)


def avg_pool(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``torch.nn.AvgPool2d`` on NHWC, with torch's divisor rules."""
    w = _window(x, kernel_size, stride, padding, ceil_mode)
    total = lax.reduce_window(x, 0.0, lax.add, w.window, w.strides, w.padding)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    if count_include_pad:
        # torch counts the explicit padding but not ceil_mode's overhang.
        (ph, pw), (_, (_, rh), (_, rw), _) = w.explicit, w.padding
        padded = jnp.pad(ones, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=1.0)
        extra = ((0, 0), (0, rh - ph), (0, rw - pw), (0, 0))
        count = lax.reduce_window(padded, 0.0, lax.add, w.window, w.strides, extra)
    else:
        count = lax.reduce_window(ones, 0.0, lax.add, w.window, w.strides, w.padding)
    return total / count


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d``: bin i spans [floor(i H / o), ceil((i + 1) H / o))."""
    oh, ow = _pair(output_size)
    h, w = x.shape[1:3]
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return avg_pool(x, (h // oh, w // ow))

    def bins(size, out):
        return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]

    rows = [
        jnp.stack([jnp.mean(x[:, a:b, c:e], axis=(1, 2)) for c, e in bins(w, ow)], axis=1)
        for a, b in bins(h, oh)
    ]
    return jnp.stack(rows, axis=1)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """``torch.flatten(x, 1)`` of the NCHW tensor torch holds, so Linear weights line up."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1) if x.ndim == 4 else x


#: ``torch.nn.LayerNorm`` over the last axis: eps 1e-5 unless given, and the
#: two-pass variance torch computes (Flax's default ``E[x^2] - E[x]^2`` loses
#: digits when the mean is large against the spread).
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5, use_fast_variance=False)


class BasicConv2d(nn.Module):
    """GoogLeNet's and Inception-v3's ``BasicConv2d``: conv (no bias), BatchNorm, ``F.relu``.

    The ReLU is a ``torch.nn.functional`` call in torchvision, invisible to the
    reference's hooks, so it is a functional call site named ``relu``: key
    ``"<path>.relu:F.relu"``, scored only with ``functional=True``.

    Attributes:
        features, kernel_size, stride, padding: as ``Conv2d``.
        eps: the BatchNorm's eps (1e-3 in both torchvision models).
    """

    features: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    eps: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(
            self.features, self.kernel_size, self.stride, self.padding, bias=False, name="conv"
        )(x)
        x = BatchNorm(epsilon=self.eps, name="bn")(x)
        return Activation("ReLU", functional=True, name="relu")(x)


def transform_input(x: jax.Array) -> jax.Array:
    """GoogLeNet's and Inception-v3's ``_transform_input`` on NHWC images.

    Maps ImageNet-normalised channels to the ``(x - 0.5) / 0.5`` normalisation
    the original (TF-ported) weights expect: ``x * std / 0.5 + (mean - 0.5) / 0.5``
    per channel, with torch's constants and operation order.
    """
    channels = [
        x[..., 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
        x[..., 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
        x[..., 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5,
    ]
    return jnp.concatenate(channels, axis=-1)
