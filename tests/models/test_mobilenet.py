"""MobileNetV2 / V3 ports against torchvision."""

import pytest
from parity import assert_features_match, assert_logits_match

from affjax.models import list_models


def test_mobilenet_v3_small_logits():
    assert_logits_match("mobilenet_v3_small", size=32)


def test_mobilenet_v3_small_features_per_call():
    assert_features_match("mobilenet_v3_small", size=32)


def test_mobilenet_v2_features_per_call():
    assert_features_match("mobilenet_v2", size=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("mobilenet"))
def test_all_mobilenets_logits(name):
    assert_logits_match(name)
