"""Shared checks: a Flax port against torchvision itself (logits, captured features)."""

from __future__ import annotations

import jax
import numpy as np
import torch
from parity_helpers import nhwc_images as nhwc
from parity_helpers import seeded_model

from affjax.capture import capture
from converters.reference import reference_signature
from converters.torchvision import convert

LOGITS_RTOL = 2e-4  # relative to the largest |logit|; float32 forward in both frameworks
FEATURES_TOL = 1e-4  # relative to the largest |feature| of the call


def images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_logits_match(
    name: str, size: int = 224, n: int = 2, model: torch.nn.Module | None = None
) -> None:
    """Logits of the port equal torchvision's (``model``: default ``seeded_model(name)``)."""
    model = seeded_model(name) if model is None else model
    module, variables = convert(model, name)
    x = images(n, size)
    with torch.no_grad():
        expected = model(x).numpy()
    # One jit: eager apply compiles every op separately for each new shape (slow on CPU).
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(module.apply)(variables, nhwc(x)))
    assert got.shape == expected.shape
    err = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert err <= LOGITS_RTOL, f"{name}: max |dlogit| / max |logit| = {err:.2e}"


def assert_features_match(
    name: str, size: int = 224, n: int = 4, model: torch.nn.Module | None = None
) -> None:
    """Reduced [n, d] features of every call equal torch forward-hook captures."""
    model = seeded_model(name) if model is None else model
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
