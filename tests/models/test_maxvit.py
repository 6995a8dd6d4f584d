"""MaxViT port against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from parity import assert_features_match, assert_logits_match
from parity_helpers import randomize_affine, seeded_model
from torchvision.models import maxvit as tv_maxvit

from affjax.capture import call_order
from affjax.models import get_model
from affjax.models.maxvit import relative_position_index


def _small_maxvit() -> torch.nn.Module:
    """A torchvision MaxVit with every kind of layer, small enough for the default suite.

    32 px: stem 16, blocks 8 and 4, so partitions of 2 give 2x2 windows and a
    4x4 / 2x2 grid. The first layer of each block is strided (AvgPool + 1x1
    projection), the second block-0 layer has the identity shortcut.
    """
    torch.manual_seed(0)
    model = tv_maxvit.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[2, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=10,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as seeded_model: non-trivial BatchNorm statistics
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return randomize_affine(model)


@pytest.mark.parametrize("hw", [(7, 7), (2, 2), (3, 5)])
def test_relative_position_index_matches_torchvision(hw):
    want = tv_maxvit._get_relative_position_index(*hw).numpy()
    np.testing.assert_array_equal(relative_position_index(*hw), want)


def test_small_maxvit_logits_and_features_per_call():
    # Converted through the maxvit_t preset: its config (and the bias-less
    # classifier's num_classes) is read off the instance.
    model = _small_maxvit()
    assert assert_logits_match("maxvit_t", size=32, model=model) <= 2e-5
    worst = assert_features_match("maxvit_t", size=32, model=model)
    assert max(worst.values()) <= 2e-5


def test_maxvit_t_call_sites():
    # maxvit_t's 68 calls, traced abstractly (no forward): the stem GELU, per
    # layer MBConv's GELU, GELU, SiLU, Sigmoid and the window and grid MLP
    # GELUs (none under an `attn` component: "attn_layer" is not "attn"), the Tanh.
    order = call_order(get_model("maxvit_t"), (1, 224, 224, 3))
    keys = [key for *_, key in order]  # (flax_path, kind, functional, reference key)
    assert len(keys) == len(set(keys)) == 1 + 6 * (2 + 2 + 5 + 2) + 1
    layer = "blocks.2.layers.4.layers."
    assert keys[0] == "stem.0.2_GELU" and keys[-1] == "classifier.4_Tanh"
    assert keys[-7:-1] == [
        "blocks.3.layers.1.layers." + k
        for k in (
            "MBconv.layers.conv_a.2_GELU",
            "MBconv.layers.conv_b.2_GELU",
            "MBconv.layers.squeeze_excitation.activation_SiLU",
            "MBconv.layers.squeeze_excitation.scale_activation_Sigmoid",
            "window_attention.mlp_layer.2_GELU",
            "grid_attention.mlp_layer.2_GELU",
        )
    ]
    assert layer + "grid_attention.mlp_layer.2_GELU" in keys


def test_maxvit_t_rejects_sizes_its_partitions_do_not_divide():
    module = get_model("maxvit_t")
    with pytest.raises(ValueError, match="not divisible"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.slow
def test_maxvit_t_logits():
    # torchvision's MaxVit is built for one input size (224 by default).
    assert_logits_match("maxvit_t", model=randomize_affine(seeded_model("maxvit_t")))


@pytest.mark.slow
def test_maxvit_t_features_per_call():
    assert_features_match("maxvit_t", model=randomize_affine(seeded_model("maxvit_t")))
