"""VGG 11/13/16/19, with and without BatchNorm (torchvision ``vgg.py``), in Flax.

Submodules carry torchvision's attribute names. ``features`` is torch's
``make_layers`` Sequential, so its indices depend on the configuration and on
``batch_norm``: conv, [BatchNorm,] ReLU per number and one MaxPool per ``"M"``
(pools hold no parameters but take an index). The classifier is Linear
(``classifier_0``), ReLU (``classifier_1``), Dropout, Linear (``classifier_3``),
ReLU (``classifier_4``), Dropout, Linear (``classifier_6``); Dropout is omitted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from affjax.models import layers, registry

__all__ = ["CONFIGS", "VGG"]

#: torchvision's ``cfgs``: output channels of each 3x3 conv, ``"M"`` a 2x2 max pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """torchvision ``VGG`` on NHWC images; returns logits ``[n, num_classes]``.

    Attributes:
        cfg: a :data:`CONFIGS` entry.
        batch_norm: the ``_bn`` variants (BatchNorm2d between conv and ReLU).
        num_classes: classifier outputs.
    """

    cfg: Sequence[int | str]
    batch_norm: bool = False
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        i = 0  # index in torch's features Sequential
        for v in self.cfg:
            if v == "M":
                x = layers.max_pool(x, 2, 2)
                i += 1
                continue
            x = layers.conv(v, 3, 1, 1, name=f"features_{i}")(x)
            i += 1
            if self.batch_norm:
                x = layers.BatchNorm(name=f"features_{i}")(x)
                i += 1
            # torch's ReLU(inplace=True): a separate call site here, same values.
            x = layers.Activation("ReLU", name=f"features_{i}")(x)
            i += 1
        # AdaptiveAvgPool2d((7, 7)): identity at 224, replicates/averages at other sizes.
        x = layers.adaptive_avg_pool(x, 7)
        # torch.flatten(x, 1) of NCHW: channel-major, the order classifier.0 expects.
        x = layers.flatten_nchw(x)
        x = nn.Dense(4096, name="classifier_0")(x)
        x = layers.Activation("ReLU", name="classifier_1")(x)
        x = nn.Dense(4096, name="classifier_3")(x)
        x = layers.Activation("ReLU", name="classifier_4")(x)
        return nn.Dense(self.num_classes, name="classifier_6")(x)


_PRESETS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

for _name, _cfg in _PRESETS.items():
    for _bn in (False, True):
        registry.register(
            f"{_name}_bn" if _bn else _name,
            "vgg",
            functools.partial(VGG, cfg=CONFIGS[_cfg], batch_norm=_bn),
            torch_class="VGG",
        )
