"""Torch-faithful pooling against torch.nn.functional, including ceil_mode corner cases."""

from optional import skip_module_without_torch

skip_module_without_torch()

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from affjax.models import layers

CASES = [  # kernel, stride, padding, ceil_mode, count_include_pad
    (3, 2, 1, True, True), (3, 2, 1, False, False), (2, 2, 0, False, True),
    (3, 2, 1, True, False), (3, 3, 0, True, True), (3, 2, 0, True, True),
]  # fmt: skip


@pytest.mark.parametrize("k,s,p,ceil,include", CASES)
@pytest.mark.parametrize("hw", [(13, 11), (14, 14)])
def test_pools_match_torch(k, s, p, ceil, include, hw):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    xn = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    f = torch.nn.functional
    want_avg = f.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=include)
    want_max = f.max_pool2d(x, k, s, p, ceil_mode=ceil)
    got_avg = np.asarray(layers.avg_pool(xn, k, s, p, ceil, include))
    got_max = np.asarray(layers.max_pool(xn, k, s, p, ceil))
    np.testing.assert_allclose(got_avg, want_avg.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(got_max, want_max.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("size,out", [(7, 7), (13, 6), (4, 6), (9, 3)])
def test_adaptive_avg_pool_matches_torch(size, out):
    x = torch.randn(2, 5, size, size, generator=torch.Generator().manual_seed(1))
    want = torch.nn.functional.adaptive_avg_pool2d(x, out).permute(0, 2, 3, 1).numpy()
    got = np.asarray(layers.adaptive_avg_pool(jnp.asarray(x.permute(0, 2, 3, 1).numpy()), out))
    np.testing.assert_allclose(got, want, atol=1e-6)
