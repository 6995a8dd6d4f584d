"""ResNet / ResNeXt / Wide ResNet ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import pytest
from parity import assert_features_match, assert_logits_match

from affjax.models import list_models


def test_resnet18_logits():
    assert_logits_match("resnet18")


def test_resnet18_features_per_call():
    assert_features_match("resnet18", size=64)


def test_bottleneck_grouped_logits():
    # smallest Bottleneck + grouped convolution variant in the default suite
    assert_logits_match("resnext50_32x4d", size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("resnet"))
def test_all_resnets_logits(name):
    assert_logits_match(name)
