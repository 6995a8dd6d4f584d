"""VGG 11/13/16/19 (with and without BatchNorm) ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import pytest
from parity import assert_features_match, assert_logits_match

from affjax.models import list_models


def test_vgg11_logits():
    assert_logits_match("vgg11")


def test_vgg11_features_per_call():
    # At 64 the map before AdaptiveAvgPool2d((7, 7)) is 2x2 (7x7 at 224): the
    # classifier ReLUs' inputs check the replicated bins.
    assert_features_match("vgg11", size=64)


def test_vgg11_bn_logits():
    # BatchNorm shifts the features indices: conv, BN, ReLU per layer.
    assert_logits_match("vgg11_bn", size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("vgg"))
def test_all_vggs_logits(name):
    assert_logits_match(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("vgg"))
def test_all_vggs_features_per_call(name):
    assert_features_match(name, size=96)


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 96, 288])
def test_vgg11_adaptive_pool_sizes(size):
    # 2x2 and 3x3 -> 7x7 (replicated bins), 9x9 -> 7x7 (overlapping bins).
    assert_logits_match("vgg11", size=size)
