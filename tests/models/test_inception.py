"""Inception-v3 port against torchvision (functional ReLUs only)."""

from optional import skip_module_without_torch

skip_module_without_torch()

import pytest
from parity import assert_basic_conv_relus_match, assert_logits_match

from affjax.models import registry

SIZE = 75  # torchvision's min_size for inception_v3; its weights expect 299


def test_inception_v3_logits():
    assert_logits_match("inception_v3", size=SIZE)


def test_inception_v3_functional_relus_per_call():
    calls, _ = assert_basic_conv_relus_match("inception_v3", size=SIZE)
    assert len(calls) == 94  # stem 5, Mixed_5b-d 3x7, 6a 4, 6b-e 4x10, 7a 6, 7b-c 2x9
    assert calls[5].key == "Mixed_5b.branch1x1.relu:F.relu"
    assert calls[6].key == "Mixed_5b.branch5x5_1.relu:F.relu"  # not branch5x5.1
    assert calls[-1].key == "Mixed_7c.branch_pool.relu:F.relu"
    assert registry.get("inception_v3").functional_only


@pytest.mark.slow
def test_inception_v3_logits_299():
    assert_logits_match("inception_v3", size=299)


def test_verbatim_names_keep_their_digits():
    # torch's `branch5x5_1` is an attribute, not `branch5x5[1]` of a Sequential.
    assert registry.torch_path(("Mixed_5b", "=branch5x5_1", "bn")) == "Mixed_5b.branch5x5_1.bn"
    assert registry.torch_path(("layer1_0", "downsample_1")) == "layer1.0.downsample.1"
