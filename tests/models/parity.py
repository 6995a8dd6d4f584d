"""Shared checks: a Flax port against torchvision itself (logits, captured features)."""

from __future__ import annotations

from optional import skip_module_without_torch

skip_module_without_torch()

import jax
import numpy as np
import torch
from parity_helpers import nhwc_images as nhwc
from parity_helpers import seeded_model

from affjax.capture import capture
from converters.reference import reference_signature
from converters.reference.hooks import _activation_keys
from converters.torchvision import convert

# Both frameworks run the forward in float32 (torch on its CPU kernels, XLA at HIGHEST);
# the ports are the same arithmetic in another order. Measured over every model (32-299
# px): logits <= 2.7e-6 relative to max |logit| in every family but EfficientNet, whose
# deep MBConv stacks reach 2.5e-5 (efficientnet_v2_m at 72 px); reduced features <=
# 1.7e-5 (maxvit_t at 224 px). Tolerances 8x and 6x the worst.
LOGITS_RTOL = 2e-4  # relative to the largest |logit|
FEATURES_TOL = 1e-4  # relative to the largest |feature| of the call


def images(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_logits_match(
    name: str, size: int = 224, n: int = 2, model: torch.nn.Module | None = None
) -> float:
    """Logits equal torchvision's; returns the measured relative error.

    ``model`` replaces the seeded ``name`` (same preset, e.g. randomised affines).
    """
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


def assert_features_match(
    name: str, size: int = 224, n: int = 4, model: torch.nn.Module | None = None
) -> dict[str, float]:
    """Reduced [n, d] features of every call equal torch forward-hook captures.

    Both reductions: the reference's on every call, and ``reduce="channels"``
    on the calls where it differs (channels-last torch tensors: ConvNeXt, Swin,
    ViT tokens), against hooks that average all but torch's batch and last axis.
    Returns the worst relative error of each; ``model`` replaces the seeded ``name``.
    """
    model = seeded_model(name) if model is None else model
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


def assert_basic_conv_relus_match(name: str, size: int, n: int = 4) -> tuple[list, float]:
    """GoogLeNet / Inception-v3: every ``F.relu`` call against torch forward hooks.

    The reference's signature of these models is empty (all their activations
    are ``F.relu`` inside ``BasicConv2d``), so ``functional=True`` captures are
    checked against hooks instead: the ReLU's input is ``BasicConv2d.bn``'s
    output (cloned in its hook, before ``F.relu(inplace=True)`` overwrites it),
    its output is the ``BasicConv2d``'s output. Both reduced as the reference
    does (mean over H, W). Returns the functional calls and the worst error.
    """
    model = seeded_model(name)
    module, variables = convert(model, name)
    x = images(n, size, seed=1)
    seen, handles = [], []
    for path, mod in model.named_modules():
        if type(mod).__name__ == "BasicConv2d":
            pre = {}
            handles.append(
                mod.bn.register_forward_hook(lambda m, i, o, pre=pre: pre.update(x=o.clone()))
            )
            handles.append(
                mod.register_forward_hook(
                    lambda m, i, o, path=path, pre=pre: seen.append(
                        (
                            f"{path}.relu:F.relu",
                            pre["x"].mean((2, 3)).numpy(),
                            o.mean((2, 3)).numpy(),
                        )
                    )
                )
            )
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert reference_signature(model, x[:2], metrics=()) == {}, "reference sees no calls"
    with jax.default_matmul_precision("highest"):
        assert capture(module, variables, nhwc(x)) == []  # the reference's (empty) view
        calls = capture(module, variables, nhwc(x), functional=True)
    assert [(c.key, c.call) for c in calls] == [(key, 0) for key, _, _ in seen]
    assert all(c.functional and c.kind == "ReLU" for c in calls)
    worst = 0.0
    for c, (key, tx, ty) in zip(calls, seen, strict=True):
        for got, want in ((c.x, tx), (c.y, ty)):
            scale = max(np.max(np.abs(want)), 1e-6)
            err = np.max(np.abs(got - want)) / scale
            assert err <= FEATURES_TOL, f"{name} {key}: feature error {err:.2e}"
            worst = max(worst, float(err))
    return calls, worst
