"""Shared torchvision blocks (Conv2dNormActivation, SqueezeExcitation) against torchvision.ops."""

from optional import skip_module_without_torch

skip_module_without_torch()

import flax.linen as nn
import jax
import numpy as np
import torch
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

from affjax.capture import capture
from affjax.models import layers
from converters.torchvision import _merge, _template


class _Torch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        bn = lambda c: torch.nn.BatchNorm2d(c, eps=1e-3)  # noqa: E731
        self.features = torch.nn.Sequential(
            Conv2dNormActivation(3, 8, 3, 2, norm_layer=bn, activation_layer=torch.nn.Hardswish),
            Conv2dNormActivation(8, 8, 3, groups=8, activation_layer=torch.nn.ReLU6),
        )
        self.se = SqueezeExcitation(8, 4, scale_activation=torch.nn.Hardsigmoid)

    def forward(self, x):
        return self.se(self.features(x))


class _Flax(nn.Module):
    image_size: int = 16

    @nn.compact
    def __call__(self, x):
        x = layers.ConvNormActivation(8, 3, 2, activation="Hardswish", eps=1e-3, name="features_0")(
            x
        )
        x = layers.ConvNormActivation(8, 3, groups=8, activation="ReLU6", name="features_1")(x)
        return layers.SqueezeExcitation(4, scale_kind="Hardsigmoid", name="se")(x)


def test_conv_norm_activation_and_squeeze_excitation_match_torchvision():
    torch.manual_seed(0)
    model = _Torch().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    variables = _merge(_template(_Flax()), {k: v.numpy() for k, v in model.state_dict().items()})
    xn = np.asarray(x.permute(0, 2, 3, 1))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(_Flax().apply(variables, xn))
        calls = capture(_Flax(), variables, xn)
    with torch.no_grad():
        want = model(x).permute(0, 2, 3, 1).numpy()
    # float32 forward of 4 layers: measured 2.4e-7; 1e-5 is ~40x that.
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [c.key for c in calls] == [
        "features.0.2_Hardswish",
        "features.1.2_Hardtanh",  # torch's ReLU6 is a Hardtanh: the reference keys it twice
        "features.1.2_ReLU6",
        "se.activation_ReLU",
        "se.scale_activation_Hardsigmoid",
    ]
