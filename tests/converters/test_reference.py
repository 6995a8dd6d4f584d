"""Tests of the PyTorch re-implementation of the published method."""

from __future__ import annotations

from optional import skip_module_without_torch

skip_module_without_torch()

import math

import numpy as np
import pytest
import torch
from torch import nn

from converters import reference as ref

DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------
# Affinity score
# ---------------------------------------------------------------------------


# Each 1000-point exact OT solve takes ~1-2 s: the float64 variant (same values
# to 5 decimals) runs with the slow checks only.
@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)]
)
def test_polynomial_scores_match_published_figures(dtype):
    x = torch.linspace(-1, 1, 1000, dtype=dtype).reshape(-1, 1)
    expected = {1: 1.00, 3: 0.71, 5: 0.58, 11: 0.40, 21: 0.29, 41: 0.20}
    for k, value in expected.items():
        score = ref.rho_aff(x, x**k, dtype=dtype)
        assert abs(score - value) <= 0.005, (k, score)
        assert round(score, 2) == value, (k, score)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_scores_match_published_figures(dtype):
    # The published figures come from the legacy global NumPy generator.
    np.random.seed(987)  # noqa: NPY002
    expected = ((torch.relu, 0.49), (torch.tanh, 0.67), (torch.sigmoid, 0.77))
    for fn, value in expected:
        x = torch.from_numpy(np.random.normal(-1, 2, (1000, 1))).to(dtype)  # noqa: NPY002
        score = ref.rho_aff(x, fn(x), dtype=dtype)
        assert abs(score - value) <= 0.005, (fn, score)


def test_psd_affine_map_scores_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = b @ b.T + 0.1 * torch.eye(5, dtype=torch.float64)
    shift = torch.randn(5, generator=g, dtype=torch.float64)
    y = x @ a + shift
    details = ref.rho_aff_details(x, y, dtype=torch.float64)
    assert abs(details.score - 1.0) <= 1e-6
    assert not details.degenerate
    # The recovered map is the true one, up to the 1e-6 ridge.
    torch.testing.assert_close(details.a, a, atol=1e-4, rtol=0)
    torch.testing.assert_close(details.mean_y, y.mean(0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_output_takes_zero_map_path(dtype):
    # tr(cov_y) = d * 1e-6 <= 2e-6 d, so A = 0 and every t_i = m_y. With an
    # exactly representable constant the mean is exact, the transport cost is
    # 0 and the ridge keeps the normaliser 2 d 1e-6 > 0: the score is exactly
    # 1, not NaN.
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(1))
    y = torch.full((500, 5), 0.5)
    details = ref.rho_aff_details(x, y, dtype=dtype)
    assert details.degenerate
    assert torch.count_nonzero(details.a) == 0
    assert float(details.ot_cost) == 0.0
    assert float(details.upper_bound) == pytest.approx(2 * 5 * 1e-6, rel=1e-5)
    assert details.score == 1.0


def test_constant_output_is_rounding_sensitive_in_float32():
    # 0.1 is not exact: the float32 mean differs from 0.1 by an ulp, the cost is
    # ~1e-8 instead of 0 and, divided by the tiny 2 d 1e-6, it moves the score.
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(1))
    y = torch.full((500, 5), 0.1)
    score32 = ref.rho_aff(x, y)
    score64 = ref.rho_aff(x, y, dtype=torch.float64)
    assert math.isfinite(score32) and score32 < 0.999
    assert score64 == pytest.approx(1.0, abs=1e-5)


def test_float32_and_float64_agree_when_well_conditioned():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 16, generator=g)
    w = torch.randn(16, 16, generator=g) / 4
    y = torch.tanh(x @ w)
    for correct_cov in (False, True):
        s32 = ref.rho_aff(x, y, correct_cov=correct_cov)
        s64 = ref.rho_aff(x, y, correct_cov=correct_cov, dtype=torch.float64)
        assert abs(s32 - s64) <= 1e-4, (correct_cov, s32, s64)


def test_scipy_sqrtm_matches_torch_sqrtm():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = torch.relu(x @ torch.randn(6, 6, generator=g, dtype=torch.float64))
    s_torch = ref.rho_aff(x, y, dtype=torch.float64)
    s_scipy = ref.rho_aff(x, y, dtype=torch.float64, sqrtm="scipy")
    assert s_scipy == pytest.approx(s_torch, abs=1e-9)
    with pytest.raises(ValueError):
        ref.rho_aff(x, y, sqrtm="numpy")


def test_torch_sqrtm_replaces_non_positive_eigenvalues():
    # A rank-1 PSD matrix: the zero eigenvalues (some rounded below zero)
    # become linspace(1e-7, 1e-6, k) instead of producing NaN.
    v = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    a = v @ v.T
    root = ref.torch_sqrtm(a, out_dtype=torch.float64)
    assert torch.isfinite(root).all()
    evals = torch.linalg.eigvalsh(root @ root)
    torch.testing.assert_close(evals[-1], torch.tensor(14.0, dtype=torch.float64))
    assert 0 < evals[0] <= 2e-6
    assert ref.torch_sqrtm(a).dtype == torch.float32


# ---------------------------------------------------------------------------
# Side metrics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cka(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100, 7, generator=g)
    y = torch.randn(100, 3, generator=g)
    assert ref.linear_cka(x, x, dtype=dtype) == pytest.approx(1.0, abs=1e-5)
    c = ref.linear_cka(x, y, dtype=dtype)
    assert 0 < c < 1
    assert ref.linear_cka(3.0 * x, 0.5 * y, dtype=dtype) == pytest.approx(c, rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_batch(dtype):
    d = 10
    distinct = torch.arange(d, dtype=dtype)  # one value per bin
    constant = torch.full((d,), 0.7, dtype=dtype)  # histc bins over [v-1, v+1]
    assert ref.entropy_batch(distinct[None], dtype=dtype) == pytest.approx(2 * math.log(d))
    assert ref.entropy_batch(constant[None], dtype=dtype) == pytest.approx(math.log(d))
    both = torch.stack([distinct, constant])
    assert ref.entropy_batch(both, dtype=dtype) == pytest.approx(1.5 * math.log(d))


def test_histc_constant_row_behaviour():
    # The behaviour entropy_batch relies on: min == max widens the range to
    # [v - 1, v + 1], so every value lands in the middle bin d // 2.
    for d in (1, 2, 3, 8):
        counts = torch.histc(torch.full((d,), -3.0), bins=d, min=-3.0, max=-3.0)
        expected = torch.zeros(d)
        expected[d // 2] = d
        torch.testing.assert_close(counts, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsity_counts_entries_above_threshold(dtype):
    t = torch.tensor([[0.0, 1e-4, -0.5], [2e-3, -1e-3, 0.0]]).reshape(2, 3, 1, 1)
    # |v| > 1e-3: -0.5 and 2e-3. float32(-1e-3) is not strictly above: the
    # comparison happens in the tensor's dtype, whatever the working dtype.
    assert ref.sparsity(t, dtype=dtype) == pytest.approx(1 - 2 / 6)
    assert ref.sparsity(t, dtype=dtype, split=1) == pytest.approx(1 - 2 / 6)
    t64 = torch.tensor([[0.0, 1e-4, -0.5], [2e-3, -1e-3, 0.0]], dtype=torch.float64)
    assert ref.sparsity(t64, dtype=dtype) == pytest.approx(1 - 2 / 6)
    # The same float32 entry viewed in float64 is above 1e-3.
    assert ref.sparsity(t.double(), dtype=dtype) == pytest.approx(1 - 3 / 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_r2_and_norm_diff(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 4, generator=g)
    y = x @ torch.randn(4, 3, generator=g) + 2.0
    assert ref.r2_score(x, y, dtype=dtype) == pytest.approx(1.0, abs=1e-5)
    assert ref.r2_score(x, torch.randn(200, 3, generator=g), dtype=dtype) < 0.2
    assert ref.norm_diff(x, x + 1, dtype=dtype) == pytest.approx(math.sqrt(800), rel=1e-6)


def test_reduce_activation():
    t4 = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    torch.testing.assert_close(ref.reduce_activation(t4), t4.mean((-2, -1)))
    t3 = t4.reshape(2, 3, 4)
    torch.testing.assert_close(ref.reduce_activation(t3), t3.mean(-1))
    t2 = t4.reshape(2, 12)
    r2 = ref.reduce_activation(t2, dtype=torch.float64)
    assert r2.dtype == torch.float64 and r2.data_ptr() != t2.data_ptr()


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc(self.relu(x)))  # one module, two calls


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ReLU()  # skipped: a name component is exactly "attn"
        self.attn_out = nn.GELU()  # kept: "attn_out" is not "attn"

    def forward(self, x):
        return self.attn_out(self.attn(x))


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        _Block(),
        nn.Tanh(),
        nn.ReLU6(),
        _Holder(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Sigmoid(),  # never called below: key present, lists empty
    )


class _Truncated(nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        for layer in list(self.seq)[:-1]:
            x = layer(x)
        return x


EXPECTED_KEYS = [
    "seq.1.relu_ReLU",
    "seq.2_Tanh",
    "seq.3_Hardtanh",
    "seq.3_ReLU6",
    "seq.4.attn_out_GELU",
    "seq.6_ReLU",
    "seq.7_Sigmoid",
]
EXPECTED_CALLS = [2, 1, 1, 1, 1, 1, 0]


def test_reference_signature_keys_calls_and_values():
    model = _Truncated(_tiny_model())
    model.train()
    images = torch.randn(64, 4, generator=torch.Generator().manual_seed(6))
    sig = ref.reference_signature(model, images, keep_features=True)

    assert list(sig) == EXPECTED_KEYS
    for key, calls in zip(EXPECTED_KEYS, EXPECTED_CALLS, strict=True):
        assert set(sig[key]) == set(ref.DEFAULT_METRICS) | {"input2d", "output2d"}
        for values in sig[key].values():
            assert len(values) == calls, key
    for metric in ref.DEFAULT_METRICS:
        assert all(type(v) is float for v in sig["seq.2_Tanh"][metric])
    # ReLU6 (a Hardtanh subclass) is recorded twice, identically.
    assert sig["seq.3_Hardtanh"]["aff_score"] == sig["seq.3_ReLU6"]["aff_score"]
    # Stored features are the real activation inputs/outputs, as float64.
    x2d, y2d = sig["seq.2_Tanh"]["input2d"][0], sig["seq.2_Tanh"]["output2d"][0]
    assert x2d.dtype == np.float64 and x2d.shape == (64, 8)
    np.testing.assert_allclose(y2d, np.tanh(x2d), rtol=1e-6, atol=1e-7)
    assert sig["seq.2_Tanh"]["aff_score"][0] == ref.rho_aff(
        torch.from_numpy(x2d).float(), torch.from_numpy(y2d).float()
    )
    # Hooks removed, training mode restored.
    assert model.training
    for module in model.modules():
        assert not module._forward_pre_hooks


def test_reference_signature_published_dict_aliasing():
    model = _Truncated(_tiny_model())
    images = torch.randn(64, 4, generator=torch.Generator().manual_seed(6))
    sig = ref.reference_signature(
        model, images, metrics=("cka_score",), replicate_dict_aliasing=True
    )
    assert sig["seq.3_Hardtanh"]["cka_score"] == []
    first, second = sig["seq.3_ReLU6"]["cka_score"]
    assert first == second
    assert sig["seq.2_Tanh"] == {"cka_score": sig["seq.2_Tanh"]["cka_score"]}


def test_reference_signature_float64_and_metric_subset():
    model = _Truncated(_tiny_model())
    images = torch.randn(64, 4, generator=torch.Generator().manual_seed(6))
    sig32 = ref.reference_signature(model, images, metrics=("aff_score", "norm_diff"))
    sig64 = ref.reference_signature(
        model, images, metrics=("aff_score", "norm_diff"), dtype=torch.float64
    )
    for key in EXPECTED_KEYS:
        assert set(sig64[key]) == {"aff_score", "norm_diff"}
        np.testing.assert_allclose(sig64[key]["norm_diff"], sig32[key]["norm_diff"], rtol=1e-5)
    with pytest.raises(ValueError):
        ref.reference_signature(model, images, metrics=("bogus",))


def test_inplace_activation_input_is_cloned():
    # Hardswish is not idempotent: without the clone, the hook's own call
    # overwrites the input and the real forward applies it a second time.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Hardswish(inplace=True), nn.Linear(8, 2))
    model.eval()
    images = torch.randn(32, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(images)

    outputs = []
    handle = model[2].register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        ref.reference_signature(model, images, metrics=("norm_diff",))
        ref.reference_signature(model, images, metrics=("norm_diff",), clone_input=False)
    finally:
        handle.remove()
    torch.testing.assert_close(outputs[0], expected)
    assert not torch.allclose(outputs[1], expected)


def test_model_meta():
    model = _tiny_model()
    model[0].weight.requires_grad_(False)

    class _Weights:
        meta = {"_metrics": {"ImageNet-1K": {"acc@1": 76.1, "acc@5": 92.9}}}

    meta = ref.model_meta(model, _Weights())
    n_params = sum(p.numel() for p in model.parameters())
    assert meta == {
        "acc@1": 76.1,
        "acc@5": 92.9,
        "total_params": n_params,
        "trainable_total_params": n_params - 32,
        "depth": len(list(model.named_modules())),
    }
    assert "acc@1" not in ref.model_meta(model)
