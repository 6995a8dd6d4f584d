"""Test helpers shared by all test folders (seeded torchvision models, NHWC images, signatures)."""

from optional import skip_module_without_torch

skip_module_without_torch()

import math

import jax
import jax.numpy as jnp
import torch
import torchvision

from affjax import METRICS, signature
from converters.reference import reference_signature
from converters.torchvision import convert


def seeded_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Seeded torchvision init with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model


def nhwc_images(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


# Per call, affjax's whole signature against the float64 reference on the same
# seeded model and images. Both score float32 activations from their own framework's
# forward pass, which differ by ~1e-7 relative; that, not the score math (float64
# against float64 agrees to ~1e-11, test_signature.py), sets these. Measured worst
# over resnet18 and alexnet (n = 128, 64 px) and densenet121 (n = 128, 32 px), and
# the tolerance as a multiple of it:
SIGNATURE_TOL = {
    "aff_score": 5e-6,  # 1.5e-7, 33x
    "aff_score_corrected": 5e-6,  # 1.1e-7, 45x
    "cka_score": 5e-6,  # 1.6e-7, 31x
    "ent_before": 1e-3,  # 1.3e-4, 8x: a value on a bin edge moves one count
    "ent_after": 1e-3,  # 1.2e-4, 8x
    "sparsity_before": 3e-4,  # 1.5e-5, 20x: entries at the 1e-3 threshold flip
    "sparsity_after": 3e-4,  # 1.5e-5, 20x
    "norm_diff": 5e-6,  # 1.3e-7 relative, 38x
    "r2_score": 2e-5,  # 5.8e-7, 34x (well-posed calls only)
}


def compare_signature(
    name: str,
    n: int,
    size: int,
    reduce: str = "reference",
    tol: float | dict | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Whole signature against the float64 PyTorch reference, every metric per call.

    ``model``: the torchvision instance to compare (default ``seeded_model(name)``).

    Returns the records and the worst per-metric deviation, so a test can also
    assert on the measured error. ``tol``: one number for every metric, a dict
    per metric, or ``None`` for :data:`SIGNATURE_TOL`. ``model`` replaces the
    seeded ``name``.
    """
    tols = SIGNATURE_TOL if tol is None else tol
    if not isinstance(tols, dict):
        tols = dict.fromkeys(METRICS, float(tols))
    model = seeded_model(name) if model is None else model
    module, variables = convert(model, name)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))
    ref = reference_signature(model, x, dtype=torch.float64)
    with jax.default_matmul_precision("highest"):
        sig = signature(module, variables, nhwc_images(x), reduce=reduce, chunk_size=64)
    records = sig.records()
    got = {(r["layer"], r["call"]): r for r in records}
    want = {
        (k, i): {m: v[m][i] for m in METRICS}
        for k, v in ref.items()
        for i in range(len(v["aff_score"]))
    }
    assert sorted(got) == sorted(want)
    worst: dict[str, float] = {}
    for site, w in want.items():
        ill = got[site]["ill_posed"].split()
        for m in ill:  # undefined there (affjax.signature.ill_posed_metrics): NaN, not a number
            assert math.isnan(got[site][m]), (name, site, m)
        for m in (m for m in METRICS if m not in ill):
            g = got[site][m]
            err = abs(g - w[m]) / (max(abs(w[m]), 1.0) if m == "norm_diff" else 1.0)
            worst[m] = max(worst.get(m, 0.0), err)
            assert err <= tols[m], f"{name} {site} {m}: affjax {g} vs reference {w[m]}"
    assert all(r["status"] == "ok" for r in records)
    return records, worst


def randomize_affine(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random LayerNorm weights/biases and ``layer_scale`` Parameters, in place.

    torchvision initialises them to 1, 0 and 1e-6 (ConvNeXt): a port that swapped,
    dropped or mis-shaped them would still match at init.
    """
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm) and mod.elementwise_affine:
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "layer_scale":
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    return model


def calibrated_model(name: str, size: int, seed: int = 0, n: int = 32) -> torch.nn.Module:
    """:func:`seeded_model` whose BatchNorm running statistics are measured on data.

    ``n`` standard-normal ``size`` px images go through the model with its
    BatchNorms in train mode (cumulative average), so every BatchNorm normalises
    its input as in a trained network; the affine weights stay randomised. Needed where random
    statistics let the signal die out with depth: in a seeded EfficientNet-B0
    the spatial means of the deep layers vary between samples by 1e-9 of their
    value, float32 rounding noise, on which no metric can be compared; in a
    seeded MobileNetV3 (torchvision counts a depthwise conv's fan-out as C*k*k,
    shrinking the variation ~10x per layer) they reach ~1e-7 of their mean.
    """
    model = seeded_model(name, seed)
    norms = [
        m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
    ]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
        m.train()  # only the norms: dropout and stochastic depth stay off
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        model(x)
    return model.eval()
