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

    ``model``: the torchvision model to port (default ``seeded_model(name)``).
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


def calibrated_model(name: str, size: int, seed: int = 0, n: int = 32) -> torch.nn.Module:
    """:func:`seeded_model` whose BatchNorm running statistics are measured on data.

    ``n`` standard-normal ``size`` px images go through the model with its
    BatchNorms in train mode (cumulative average), so every BatchNorm normalises its input as in a
    trained network; the affine weights stay randomised. Needed where random
    statistics let the signal die out with depth: in a seeded EfficientNet-B0
    the spatial means of the deep layers vary between samples by 1e-9 of their
    value, float32 rounding noise, on which no metric can be compared.
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
