"""Test helpers shared by all test folders (seeded torchvision models, NHWC images, signatures)."""

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


SIGNATURE_TOL = 1e-3  # per call, every metric (norm_diff relative)


def compare_signature(
    name: str,
    n: int,
    size: int,
    reduce: str = "reference",
    tol: float = SIGNATURE_TOL,
    model: torch.nn.Module | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Whole signature against the float64 PyTorch reference, every metric per call.

    ``model``: the torchvision instance to compare (default ``seeded_model(name)``).

    Returns the records and the worst per-metric deviation, so a test can also
    assert on the measured error.
    """
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
        for m in METRICS:
            g = got[site][m]
            err = abs(g - w[m]) / (max(abs(w[m]), 1.0) if m == "norm_diff" else 1.0)
            worst[m] = max(worst.get(m, 0.0), err)
            assert err <= tol, f"{name} {site} {m}: affjax {g} vs reference {w[m]}"
    assert all(r["status"] == "ok" for r in records)
    return records, worst


def calibrated_model(name: str, size: int, seed: int = 0, n: int = 256) -> torch.nn.Module:
    """``seeded_model`` with BatchNorm running statistics measured on random images.

    torchvision's init (``kaiming_normal_(mode="fan_out")``) counts a depthwise
    conv's fan-out as ``C * k * k``, so every depthwise layer shrinks the
    sample-to-sample variation of the spatially averaged features by ~10x; in a
    seeded MobileNetV3 it falls to ~1e-7 of their mean, float32's resolution,
    where CKA and R^2 compare rounding noise. Running statistics taken from a
    batch of ``n`` images of ``size`` px (as BatchNorm recalibration does)
    keep every layer's features informative, like trained weights do.
    """
    model = seeded_model(name, seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives its exact statistics
    gen = torch.Generator().manual_seed(seed + 2)
    model.train()
    with torch.no_grad():
        model(torch.randn(n, 3, size, size, generator=gen))
    return model.eval()
