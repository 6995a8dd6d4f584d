"""ShuffleNetV2 ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import numpy as np
import pytest
import torch
from parity import assert_features_match, assert_logits_match
from torchvision.models.shufflenetv2 import channel_shuffle as torch_channel_shuffle

from affjax.models import list_models
from affjax.models.shufflenet import channel_shuffle


@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle_matches_torch_on_nchw(groups):
    x = torch.randn(2, 6 * groups, 3, 4, generator=torch.Generator().manual_seed(0))
    want = torch_channel_shuffle(x, groups).permute(0, 2, 3, 1).numpy()
    got = np.asarray(channel_shuffle(x.permute(0, 2, 3, 1).numpy(), groups))
    np.testing.assert_array_equal(got, want)  # a permutation: exact


def test_shufflenet_v2_x0_5_logits():
    assert_logits_match("shufflenet_v2_x0_5", size=32)


def test_shufflenet_v2_x0_5_features_per_call():
    assert_features_match("shufflenet_v2_x0_5", size=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("shufflenet"))
def test_all_shufflenets_logits(name):
    assert_logits_match(name)
