"""AlexNet (torchvision ``alexnet.py``) in Flax.

Submodules carry torchvision's attribute names: ``features_0`` is torch's
``features.0`` (a Conv2d), ``classifier_2`` its ``classifier.2`` (a ReLU). The
Dropout layers (``classifier.0``, ``classifier.3``) are inference no-ops and
are omitted, but the indices of the other layers keep their torch values.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from affjax.models import layers, registry

__all__ = ["AlexNet"]


class AlexNet(nn.Module):
    """torchvision ``AlexNet`` on NHWC images; returns logits ``[n, num_classes]``.

    torchvision's ReLUs are ``inplace=True``; that only matters to hooks that
    read the input after the call, and each one is a separate call site here.
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # features: (torch index of the conv, out channels, kernel, stride, padding, pool after)
        for i, (c, k, s, p, pool) in {
            0: (64, 11, 4, 2, True),
            3: (192, 5, 1, 2, True),
            6: (384, 3, 1, 1, False),
            8: (256, 3, 1, 1, False),
            10: (256, 3, 1, 1, True),
        }.items():
            x = layers.conv(c, k, s, p, name=f"features_{i}")(x)
            x = layers.Activation("ReLU", name=f"features_{i + 1}")(x)
            if pool:
                x = layers.max_pool(x, 3, 2)  # MaxPool2d(3, 2), floor mode
        # AdaptiveAvgPool2d((6, 6)) also upsamples the 1x1 or 2x2 maps of small inputs.
        x = layers.adaptive_avg_pool(x, 6)
        # torch flattens NCHW: channel-major order, which classifier.1's weight expects.
        x = layers.flatten_nchw(x)
        x = nn.Dense(4096, name="classifier_1")(x)
        x = layers.Activation("ReLU", name="classifier_2")(x)
        x = nn.Dense(4096, name="classifier_4")(x)
        x = layers.Activation("ReLU", name="classifier_5")(x)
        return nn.Dense(self.num_classes, name="classifier_6")(x)


registry.register("alexnet", "alexnet", AlexNet, torch_class="AlexNet")
