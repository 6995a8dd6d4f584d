"""AlexNet port against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import pytest
from parity import assert_features_match, assert_logits_match

from affjax.models import list_models


def test_alexnet_logits():
    assert_logits_match("alexnet")


def test_alexnet_features_per_call():
    assert_features_match("alexnet", size=64)


# Feature map before AdaptiveAvgPool2d((6, 6)): 6x6 at 224 (the identity), 1x1 at
# 64 (features test above), 2x2 at 96 (replicated bins), 4x4 at 160 (overlapping
# upsampling bins), 8x8 at 288 (overlapping downsampling bins).
@pytest.mark.parametrize(
    "size",
    [96, 288, pytest.param(64, marks=pytest.mark.slow), pytest.param(160, marks=pytest.mark.slow)],
)
def test_alexnet_adaptive_pool_sizes(size):
    assert_logits_match("alexnet", size=size)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("alexnet"))
def test_all_alexnets_logits(name):
    assert_logits_match(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("alexnet"))
def test_all_alexnets_features_per_call(name):
    assert_features_match(name)
