"""Vision Transformer ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import jax
import numpy as np
import pytest
import torch
import torchvision
from parity import FEATURES_TOL, assert_features_match, assert_logits_match, images
from parity_helpers import compare_signature, nhwc_images

from affjax.capture import capture
from affjax.models import list_models, torch_path
from converters.torchvision import convert

# 96 px: 3 x 3 patches of 32 plus the class token, so attention and the patch
# order (row-major) are exercised; torchvision builds pos_embedding for it.
SMALL = 96


def seeded_vit(name: str, image_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    """Seeded torchvision ViT whose zero/one-initialised tensors are randomised.

    torchvision zeroes ``heads.head`` (every logit would be 0), the class token
    and the attention biases, and sets LayerNorms to the identity affine map:
    a port could get those wrong and still match.
    """
    torch.manual_seed(seed)
    config = {} if image_size is None else {"image_size": image_size}
    model = torchvision.models.get_model(name, weights=None, **config).eval()
    gen = torch.Generator().manual_seed(seed + 1)

    def randn(t, scale):
        return scale * torch.randn(t.shape, generator=gen)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(randn(mod.weight, 0.2))
                mod.bias.copy_(randn(mod.bias, 0.1))
            elif isinstance(mod, torch.nn.MultiheadAttention):
                mod.in_proj_bias.copy_(randn(mod.in_proj_bias, 0.1))
                mod.out_proj.bias.copy_(randn(mod.out_proj.bias, 0.1))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(randn(mod.bias, 0.1))
        model.class_token.copy_(randn(model.class_token, 1.0))
        model.heads.head.weight.copy_(randn(model.heads.head.weight, 0.02))
    return model


def test_names_follow_torchvision():
    assert torch_path(("encoder", "layers.encoder_layer_11.mlp", "1")) == (
        "encoder.layers.encoder_layer_11.mlp.1"
    )
    assert torch_path(("layer1_0", "conv1")) == "layer1.0.conv1"  # the index rule still holds


def test_vit_b_32_logits():
    # measured 8.8e-7 (bound 2e-4)
    assert_logits_match("vit_b_32", SMALL, model=seeded_vit("vit_b_32", SMALL))


def test_vit_b_32_features_per_call_both_reductions():
    """Reference reduction (tokens kept, d = L) and channels reduction (d = D) vs torch hooks."""
    model = seeded_vit("vit_b_32", SMALL)
    # Measured worst feature errors: reference 1.3e-6, channels 6.0e-7 (bound 1e-4).
    # Reference reduction: the shared check (keys, calls, [n, L] features).
    assert_features_match("vit_b_32", SMALL, model=model)

    # Channels reduction: torch's [n, L, D] hook tensors averaged over the tokens.
    x = images(4, SMALL, seed=1)
    hooked = {}

    def hook(name):
        def fn(mod, inp, out):
            hooked[name] = (inp[0].mean(dim=1).numpy(), out.mean(dim=1).numpy())

        return fn

    handles = [
        m.register_forward_hook(hook(f"{name}_GELU"))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.GELU)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    module, variables = convert(model, "vit_b_32")
    with jax.default_matmul_precision("highest"):
        calls = capture(module, variables, nhwc_images(x))
    assert [c.key for c in calls] == list(hooked)
    assert len(calls) == 12
    tokens = (SMALL // 32) ** 2 + 1
    for c in calls:
        assert c.x.shape == (4, tokens)  # reference: mean over D, d = L
        # channels: d = the GELU's width, mlp_dim
        assert c.x_channels.shape == c.y_channels.shape == (4, 3072)
        for got, want in zip((c.x_channels, c.y_channels), hooked[c.key], strict=True):
            err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6)
            assert err <= FEATURES_TOL, f"{c.key} channels: feature error {err:.2e}"


def test_image_size_survives_a_checkpoint():
    from affjax.checkpoint import module_config
    from affjax.models import get_model

    # Conversion reads image_size off the torch instance (from_torch); a checkpoint
    # stores the module's scalar config and rebuilds the preset from it.
    module = get_model("vit_h_14", image_size=518)
    config = module_config(module)
    assert config["image_size"] == 518
    assert get_model("vit_h_14", **config) == module


def test_wrong_image_size_is_rejected():
    from affjax.models import get_model

    module = get_model("vit_b_32", image_size=64)
    with pytest.raises(ValueError, match="built for 64x64"):
        jax.eval_shape(module.init, jax.random.key(0), jax.numpy.zeros((1, 96, 96, 3)))


# Measured (n = 64, 224 px, d = 50 tokens, 12 calls): every continuous metric within
# 1e-7 of the float64 reference; the entropies within 4.6e-4. Those are histograms (d
# bins per sample), discontinuous in the features: one of the 64 x 50 values crossing a
# bin edge on float32 round-off moves one sample's entropy by ~0.028 and the batch mean
# by ~4.3e-4. Bounds: 1e-6 (10x) for continuous metrics, 1e-3 (two such flips) for entropies.
SIGNATURE_TOL_CONTINUOUS = 1e-6
SIGNATURE_TOL_ENTROPY = 1e-3


@pytest.mark.slow  # ~100 s alone on 2 CPU cores
def test_vit_b_32_signature_matches_float64_reference():
    _, worst = compare_signature(
        "vit_b_32", n=64, size=224, model=seeded_vit("vit_b_32"), tol=SIGNATURE_TOL_ENTROPY
    )
    for metric, err in worst.items():
        bound = SIGNATURE_TOL_ENTROPY if metric.startswith("ent_") else SIGNATURE_TOL_CONTINUOUS
        assert err <= bound, f"{metric}: {err:.2e} > {bound:.0e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("vision_transformer"))
def test_all_vits_logits(name):
    # random-init size (224) for every preset; vit_h_14: ~60 s, 5.5 GiB peak RSS.
    assert_logits_match(name, model=seeded_vit(name))
