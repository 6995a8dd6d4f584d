"""Swin Transformer V1/V2 ports against torchvision."""

from optional import skip_module_without_torch

skip_module_without_torch()

import numpy as np
import pytest
from parity import assert_features_match, assert_logits_match
from parity_helpers import compare_signature

from affjax.models import list_models
from affjax.models.swin import relative_coords_table, relative_position_index, shift_mask

# 80 px: stage maps 20, 10, 5, 3. Stages 1-2 have shifted windows (attention
# masks) over zero-padded maps for both window sizes (7 and 8), stage 3 pads
# without a shift, and merging stage 3 pads an odd map; smaller sizes drop some
# of these paths.
SIZE = 80


def test_swin_t_logits():
    assert_logits_match("swin_t", size=SIZE)


def test_swin_t_features_per_call():
    assert_features_match("swin_t", size=SIZE)


def test_swin_v2_t_logits():
    assert_logits_match("swin_v2_t", size=SIZE)


def test_swin_v2_t_features_per_call():
    assert_features_match("swin_v2_t", size=SIZE)


def test_derived_buffers_match_torchvision():
    # The converter drops these state_dict buffers; the port recomputes them.
    torch = pytest.importorskip("torch")
    from torchvision.models.swin_transformer import (
        ShiftedWindowAttention,
        ShiftedWindowAttentionV2,
    )

    for window in ((7, 7), (8, 8), (3, 5)):
        v1 = ShiftedWindowAttention(8, list(window), [0, 0], 2)
        v2 = ShiftedWindowAttentionV2(8, list(window), [0, 0], 2)
        np.testing.assert_array_equal(
            relative_position_index(window), v1.relative_position_index.numpy()
        )
        np.testing.assert_array_equal(
            relative_position_index(window), v2.relative_position_index.numpy()
        )
        np.testing.assert_allclose(
            relative_coords_table(window), v2.relative_coords_table.numpy(), rtol=0, atol=1e-7
        )
    del torch


def test_shift_mask_regions():
    # 14x14 map, window 7, shift 3: the last window row/column mixes two regions.
    mask = shift_mask((14, 14), (7, 7), (3, 3))
    assert mask.shape == (4, 49, 49)
    assert set(np.unique(mask)) == {0.0, -100.0}
    assert not mask[0].any()  # top-left window holds one region
    np.testing.assert_array_equal(mask, np.swapaxes(mask, 1, 2))
    # window 3 (bottom right) has 4 regions of 4x4, 4x3, 3x4, 3x3 tokens: each token
    # attends (mask 0) to the tokens of its own region.
    same = (mask[3] == 0).sum(axis=1)
    np.testing.assert_array_equal(np.unique(same, return_counts=True), [[9, 12, 16], [9, 24, 16]])


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("swin"))
def test_all_swins_logits(name):
    # each preset at its weights' crop size: 224 (window 7), 256 for V2 (window 8)
    assert_logits_match(name, size=256 if "v2" in name else 224)


# Measured worst deviation from the float64 reference over the 12 calls (n = 64,
# 224 px, d = 56/28/14/7): 9.3e-7 (ent_after), aff_score 8.5e-8. 1e-5 leaves a 10x
# margin for float32 forward differences between machines.
SWIN_SIGNATURE_TOL = 1e-5


@pytest.mark.slow  # ~3 min on the 2-core CPU: the batch-64 forward in both frameworks
def test_swin_t_signature_matches_reference():
    _, worst = compare_signature("swin_t", 64, 224, tol=SWIN_SIGNATURE_TOL)
    assert worst["aff_score"] <= 1e-6, worst
