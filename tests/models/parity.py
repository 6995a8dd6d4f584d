"""Shared checks: a Flax port against torchvision itself (logits, captured features)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from affjax.capture import capture
from converters.reference import reference_signature
from converters.torchvision import convert

LOGITS_RTOL = 2e-4  # relative to the largest |logit|; float32 forward in both frameworks
FEATURES_TOL = 1e-4  # relative to the largest |feature| of the call


def random_torch_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Seeded torchvision init with BatchNorm statistics made non-trivial.

    Fresh BatchNorm layers are the identity (mean 0, var 1, weight 1, bias 0),
    which would hide a wrong mapping of any of them.
    """
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


def images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def nhwc(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def assert_logits_match(name: str, size: int = 224, n: int = 2) -> None:
    model = random_torch_model(name)
    module, variables = convert(model, name)
    x = images(n, size)
    with torch.no_grad():
        expected = model(x).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(module.apply(variables, nhwc(x)))
    assert got.shape == expected.shape
    err = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert err <= LOGITS_RTOL, f"{name}: max |dlogit| / max |logit| = {err:.2e}"


def assert_features_match(name: str, size: int = 224, n: int = 4) -> None:
    """Reduced [n, d] features of every call equal torch forward-hook captures."""
    model = random_torch_model(name)
    module, variables = convert(model, name)
    x = images(n, size, seed=1)
    ref = reference_signature(model, x, metrics=(), keep_features=True)
    with jax.default_matmul_precision("highest"):
        calls = capture(module, variables, nhwc(x))
    ours = {(c.key, c.call): c for c in calls}
    theirs = {
        (key, k): (rec["input2d"][k], rec["output2d"][k])
        for key, rec in ref.items()
        for k in range(len(rec["input2d"]))
    }
    assert sorted(ours) == sorted(theirs), "call sites differ from the reference's keys"
    for site, (tx, ty) in theirs.items():
        c = ours[site]
        for got, want in ((c.x, tx), (c.y, ty)):
            scale = max(np.max(np.abs(want)), 1e-6)
            err = np.max(np.abs(got - want)) / scale
            assert err <= FEATURES_TOL, f"{name} {site}: feature error {err:.2e}"
