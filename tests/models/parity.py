"""Shared checks: a Flax port against torchvision itself (logits, captured features)."""

from __future__ import annotations

import jax
import numpy as np
import torch
from parity_helpers import nhwc_images as nhwc
from parity_helpers import seeded_model

from affjax.capture import capture
from converters.reference import _activation_keys, reference_signature
from converters.torchvision import convert

LOGITS_RTOL = 2e-4  # relative to the largest |logit|; float32 forward in both frameworks
FEATURES_TOL = 1e-4  # relative to the largest |feature| of the call


def images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_logits_match(name: str, size: int = 224, n: int = 2) -> float:
    """Logits equal torchvision's; returns the measured relative error."""
    model = seeded_model(name)
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
    return float(err)


def _channel_mean(t: torch.Tensor) -> np.ndarray:
    # reduce="channels" on a tensor torch holds channels-last: keep batch and the last axis.
    return t.mean(dim=tuple(range(1, t.ndim - 1))).numpy() if t.ndim > 2 else t.numpy()


def _channel_hooks(model: torch.nn.Module, store: dict) -> list:
    """Hooks recording (input, output) channel means of every reference-keyed module call."""
    handles = []
    for path, mod in model.named_modules():
        for key in _activation_keys(path, mod):
            calls = store.setdefault(key, [])
            # The input is reduced before the module runs (in-place activations).
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, inp, calls=calls: calls.append([_channel_mean(inp[0])])
                )
            )
            handles.append(
                mod.register_forward_hook(
                    lambda m, inp, out, calls=calls: calls[-1].append(_channel_mean(out))
                )
            )
    return handles


def assert_features_match(name: str, size: int = 224, n: int = 4) -> dict[str, float]:
    """Reduced [n, d] features of every call equal torch forward-hook captures.

    Both reductions: the reference's on every call, and ``reduce="channels"``
    on the calls where it differs (channels-last torch tensors: ConvNeXt, Swin,
    ViT tokens), against hooks that average all but torch's batch and last axis.
    Returns the worst relative error of each.
    """
    model = seeded_model(name)
    module, variables = convert(model, name)
    x = images(n, size, seed=1)
    channel_calls: dict[str, list] = {}
    handles = _channel_hooks(model, channel_calls)
    try:
        ref = reference_signature(model, x, metrics=(), keep_features=True)
    finally:
        for handle in handles:
            handle.remove()
    with jax.default_matmul_precision("highest"):
        calls = capture(module, variables, nhwc(x))
    ours = {(c.key, c.call): c for c in calls}
    theirs = {
        (key, k): (rec["input2d"][k], rec["output2d"][k])
        for key, rec in ref.items()
        for k in range(len(rec["input2d"]))
    }
    assert sorted(ours) == sorted(theirs), "call sites differ from the reference's keys"
    worst = {"reference": 0.0, "channels": 0.0}
    for site, (tx, ty) in theirs.items():
        c = ours[site]
        pairs = [("reference", c.x, tx), ("reference", c.y, ty)]
        if c.x_channels is not None:
            cx, cy = channel_calls[site[0]][site[1]]
            pairs += [("channels", c.x_channels, cx), ("channels", c.y_channels, cy)]
        for reduction, got, want in pairs:
            assert got.shape == want.shape, f"{name} {site} {reduction}: shapes differ"
            scale = max(np.max(np.abs(want)), 1e-6)
            err = float(np.max(np.abs(got - want)) / scale)
            worst[reduction] = max(worst[reduction], err)
            assert err <= FEATURES_TOL, f"{name} {site} {reduction}: feature error {err:.2e}"
    return worst
