"""Signatures of converted models against the PyTorch reference, call by call."""

import json

import numpy as np
import pytest
import torch
from parity_helpers import compare_signature, nhwc_images, seeded_model

from affjax import SignatureError, signature
from affjax import capture as capture_lib
from converters.torchvision import convert


def test_resnet18_signature_matches_reference():
    records, _ = compare_signature("resnet18", n=128, size=64)
    layers = [r["layer"] for r in records]
    # execution order, repeated block relu calls interleaved, reference key names
    assert layers[:5] == [
        "relu_ReLU",
        "layer1.0.relu_ReLU",
        "layer1.0.relu_ReLU",
        "layer1.1.relu_ReLU",
        "layer1.1.relu_ReLU",
    ]
    assert [r["call"] for r in records[:5]] == [0, 0, 1, 0, 1]
    assert len(records) == 17


def test_alexnet_signature_matches_reference():
    records, _ = compare_signature("alexnet", n=128, size=64)
    assert [r["layer"] for r in records] == [
        "features.1_ReLU",
        "features.4_ReLU",
        "features.7_ReLU",
        "features.9_ReLU",
        "features.11_ReLU",
        "classifier.2_ReLU",
        "classifier.5_ReLU",
    ]


def test_densenet121_signature_matches_reference():
    records, _ = compare_signature("densenet121", n=128, size=32)
    assert len(records) == 1 + 2 * (6 + 12 + 24 + 16) + 3


def test_chunked_forward_equals_whole_batch():
    model = seeded_model("resnet18")
    module, variables = convert(model, "resnet18")
    x = nhwc_images(torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    a = signature(module, variables, x, metrics=("aff_score", "sparsity_after")).records()
    compiled = capture_lib._forward._cache_size()
    b = signature(
        module, variables, x, chunk_size=5, metrics=("aff_score", "sparsity_after")
    ).records()
    # chunks of 5, 5 and 2: the short one is padded, so one new compile, not two
    assert capture_lib._forward._cache_size() == compiled + 1
    for ra, rb in zip(a, b, strict=True):
        assert ra["layer"] == rb["layer"]
        assert ra["aff_score"] == pytest.approx(rb["aff_score"], abs=1e-6)
        assert ra["sparsity_after"] == pytest.approx(rb["sparsity_after"], abs=1e-7)


def test_outputs_and_nan_policy(tmp_path):
    model = seeded_model("resnet18")
    module, variables = convert(model, "resnet18")
    x = np.asarray(nhwc_images(torch.randn(8, 3, 32, 32)))
    sig = signature(module, variables, x, metrics=("aff_score",))
    sig.to_csv(tmp_path / "s.csv")
    sig.to_json(tmp_path / "s.json")
    sig.plot(tmp_path / "s.png")
    payload = json.loads((tmp_path / "s.json").read_text())
    assert payload["schema"] == "affjax.signature/1"
    assert len(payload["records"]) == 17
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "s.csv").read_text().splitlines()[0].startswith("index,layer,call")
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    sig = signature(module, variables, bad, metrics=("aff_score",))
    failed = sig.failures()
    assert failed and all(np.isnan(r["aff_score"]) for r in failed)
    assert {r["status"] for r in failed} == {"nonfinite"}
    with pytest.raises(SignatureError, match="could not be scored"):
        sig.check()


def test_bad_signature_input():
    model = seeded_model("resnet18")
    module, variables = convert(model, "resnet18")
    with pytest.raises(SignatureError, match="at least 2"):
        signature(module, variables, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(SignatureError, match="NHWC"):
        signature(module, variables, np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(SignatureError, match="unknown metrics"):
        signature(module, variables, np.zeros((4, 32, 32, 3), np.float32), metrics=("acc",))


def test_functional_only_model_has_an_empty_signature_that_says_why():
    # GoogLeNet / Inception-v3 in miniature: every activation is BasicConv2d's F.relu.
    import flax.linen as nn
    import jax

    from affjax.models import layers

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = layers.BasicConv2d(4, 3, name="conv1")(x)
            return layers.BasicConv2d(4, 1, name="conv2")(x)

    x = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)
    variables = Tiny().init(jax.random.key(0), x)
    default = signature(Tiny(), variables, x, metrics=("aff_score",))
    assert default.records() == []
    assert "F.relu" in default.meta["note"] and "functional=True" in default.meta["note"]
    assert default.meta["num_calls"] == 0
    full = signature(Tiny(), variables, x, metrics=("aff_score",), functional=True)
    assert [r["layer"] for r in full.records()] == ["conv1.relu:F.relu", "conv2.relu:F.relu"]
    assert "note" not in full.meta
