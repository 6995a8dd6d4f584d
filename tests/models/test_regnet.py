"""RegNetX / RegNetY ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import inspect
import re

import pytest
from parity import assert_features_match, assert_logits_match
from torchvision.models import regnet as tv_regnet

from affjax.models import list_models, regnet


@pytest.mark.parametrize("name", list_models("regnet"))
def test_block_params_match_torchvision(name):
    # Our presets repeat torchvision's builder arguments and regenerate the
    # stages in float32; both must agree with torchvision's own BlockParams.
    source = inspect.getsource(getattr(tv_regnet, name))
    args = re.search(r"from_init_params\((.*?)\*\*kwargs", source, re.S).group(1)
    theirs_args = eval(f"dict({args})")  # noqa: S307 - torchvision's own source text
    assert theirs_args == regnet._PRESETS[name]
    theirs = tv_regnet.BlockParams.from_init_params(**theirs_args)
    ours = regnet.preset_params(name)
    assert ours.depths == tuple(theirs.depths)
    assert ours.widths == tuple(theirs.widths)
    assert ours.group_widths == tuple(theirs.group_widths)
    assert ours.bottleneck_multipliers == tuple(theirs.bottleneck_multipliers)
    assert ours.se_ratio == theirs.se_ratio
    assert set(theirs.strides) == {2}


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_400mf"])
def test_regnet_400mf_logits(name):
    # 32 px: five stride-2 stages bring it to 1x1, the smallest size using every layer.
    assert_logits_match(name, size=32)


def test_regnet_y_400mf_features_per_call():
    # RegNetY's block is RegNetX's plus the SE module, so this covers every
    # call site kind; capture compiles take ~20 s per model on 2 CPU cores.
    assert_features_match("regnet_y_400mf", size=32)


@pytest.mark.slow
def test_regnet_x_400mf_features_per_call():
    assert_features_match("regnet_x_400mf", size=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("regnet"))
def test_all_regnets_logits(name):
    assert_logits_match(name)
