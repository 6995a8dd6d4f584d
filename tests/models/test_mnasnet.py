"""MNASNet ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import collections
import warnings

import jax
import numpy as np
import pytest
import torch
import torchvision
from parity import LOGITS_RTOL, assert_features_match, assert_logits_match, images
from parity_helpers import nhwc_images

from affjax.models import list_models
from converters.torchvision import convert


def test_mnasnet0_5_logits():
    assert_logits_match("mnasnet0_5", size=32)


def test_mnasnet0_5_features_per_call():
    assert_features_match("mnasnet0_5", size=32)


def test_version_1_checkpoint_stem():
    # Old checkpoints (mnasnet0_5's IMAGENET1K_V1) carry version 1 in their
    # metadata; torchvision then swaps in a stem with widths 32 and 16 before
    # loading. An empty state_dict with that metadata triggers the same swap.
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5()
    state = collections.OrderedDict()
    state._metadata = {"": {"version": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "A new version of MNASNet ..."
        model.load_state_dict(state, strict=False)
    model.eval()  # after the swap: the new stem modules are created in training mode
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (model.layers[1], model.layers[4], model.layers[7]):
            bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(bn.num_features, generator=gen))
    assert model.layers[0].out_channels == 32 and model.layers[6].out_channels == 16
    module, variables = convert(model)  # name inferred; v1 stem read off the instance
    assert module.alpha == 0.5 and module.v1_stem
    x = images(2, 32)
    with torch.no_grad():
        want = model(x).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(module.apply)(variables, nhwc_images(x)))
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= LOGITS_RTOL, err


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("mnasnet"))
def test_all_mnasnets_logits(name):
    assert_logits_match(name)
