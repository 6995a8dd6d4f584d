"""SqueezeNet 1.0 / 1.1 ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import pytest
from parity import assert_features_match, assert_logits_match

from affjax.models import list_models


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_logits(name):
    # squeezenet1_0 at 224 needs ceil_mode in its second pool (54 -> 27 rows, not 26).
    assert_logits_match(name)


# Sizes where some MaxPool2d(3, 2, ceil_mode=True) keeps a partial last window:
# squeezenet1_0 at 64 (14 -> 7), squeezenet1_1 at 68 (16 -> 8).
@pytest.mark.parametrize("name, size", [("squeezenet1_0", 64), ("squeezenet1_1", 68)])
def test_squeezenet_features_per_call(name, size):
    assert_features_match(name, size=size)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("squeezenet"))
@pytest.mark.parametrize("size", [224, 96, 99])
def test_all_squeezenets_logits(name, size):
    assert_logits_match(name, size=size)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("squeezenet"))
def test_all_squeezenets_features_per_call(name):
    assert_features_match(name)
