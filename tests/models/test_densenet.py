"""DenseNet ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import jax
import numpy as np
import pytest
from parity import assert_features_match, assert_logits_match
from random_variables import random_variables

from affjax.capture import capture
from affjax.models import list_models
from affjax.models.densenet import DenseNet


def test_densenet121_logits():
    # 64 (not 224): eager Flax on CPU compiles one XLA op per distinct shape,
    # and every dense layer has its own input width; the size only adds compute.
    assert_logits_match("densenet121", size=64)


def test_densenet121_features_per_call():
    assert_features_match("densenet121", size=64)


def test_functional_relu_site_only_on_request():
    # torchvision's forward ends with F.relu(features): the reference's hooks
    # never see it, so it must not be a reference-keyed call by default.
    # A small DenseNet keeps the compile short; the site is the same in every preset.
    module = DenseNet(growth_rate=4, block_config=(1, 2, 1, 1), num_init_features=8)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    # Random variables from numpy: compiling module.init (threefry per leaf) is slower
    # on CPU than the whole capture.
    variables = random_variables(module, x.shape, np.random.default_rng(0), scale=1.0)

    default = capture(module, variables, x)
    assert not any(c.functional or ":" in c.key for c in default)
    assert [c.key for c in default][:2] == [
        "features.relu0_ReLU",
        "features.denseblock1.denselayer1.relu1_ReLU",
    ]
    assert default[-1].key == "features.denseblock4.denselayer1.relu2_ReLU"

    full = capture(module, variables, x, functional=True)
    extra = [c for c in full if c.functional]
    assert [c.key for c in extra] == ["features_relu:F.relu"]
    assert full[-1] is extra[0]  # runs last, after norm5
    assert [c.key for c in full[:-1]] == [c.key for c in default]
    # norm5's width: (((8 + 4) // 2 + 2 * 4) // 2 + 4) // 2 + 4 = 9 channels
    assert extra[0].x.shape == extra[0].y.shape == (2, 9)
    # 32 px leaves norm5 at 1x1, so the spatial means are the values themselves
    np.testing.assert_array_equal(extra[0].y, np.maximum(extra[0].x, 0))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("densenet"))
def test_all_densenets_logits(name):
    assert_logits_match(name)
