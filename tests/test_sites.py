"""Signatures of any Flax model: site selection, function call sites, generic inputs.

Torch-free: the models are Flax modules defined here or in tests/flax_imagenet_resnet.py,
and our resnet18 port with freshly initialised variables.
"""

import re
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax_imagenet_resnet import ResNet18

import affjax
from affjax import SignatureError, affinity_score, signature
from affjax import capture as capture_lib
from affjax import sites as sites_lib
from affjax.models import layers, registry


class _TwoGelu(nn.Module):
    """The issue's case: a 2-call model whose variables come straight from ``init``."""

    @nn.compact
    def __call__(self, x):
        x = layers.Activation("GELU", name="act1")(nn.Dense(8)(x))
        return layers.Activation("GELU", name="act2")(nn.Dense(8)(x))


def _same_records(a: list[dict], b: list[dict]) -> bool:
    """Equal records, NaN equal to NaN (a constant output has no CKA)."""
    nan = object()

    def norm(r):
        return {k: nan if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()}

    return [norm(r) for r in a] == [norm(r) for r in b]


def test_init_variables_with_any_collections_do_not_corrupt_the_signature():
    x = np.random.default_rng(0).normal(size=(64, 4, 4, 3)).astype(np.float32)
    module = _TwoGelu()
    variables = module.init(jax.random.key(0), jnp.ones((64, 4, 4, 3)))
    # init sowed the init batch into "affinity"; before the fix capture read it back
    # and gave [1.0, 1.0] with status ok (constant init batch -> degenerate map).
    assert "affinity" in variables
    clean = {"params": variables["params"]}
    noisy = {
        **variables,
        "intermediates": {"act1": {"__call__": (jnp.zeros((64, 8)),)}},
        "mine": {"stuff": jnp.ones(3)},  # anything a user sowed
    }
    want = signature(module, clean, x, metrics=("aff_score",)).scores()
    for v in (variables, noisy):
        got = signature(module, v, x, metrics=("aff_score",))
        np.testing.assert_array_equal(got.scores(), want)
        assert [r["status"] for r in got.records()] == ["ok", "ok"]
        generic = signature(module, v, x, metrics=("aff_score",), sites="Activation")
        np.testing.assert_array_equal(generic.scores(), want)
    # measured: [0.7055, 0.7616] (seeded init above); far from the corrupted 1.0
    assert np.all(want < 0.8) and np.all(want > 0.6)


def test_selector_shorthands():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.Activation("ReLU", name="relu")(nn.Dense(4, name="fc")(x))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = Block(name="block_0")(x)
            return Block(name="block_1")(x)

    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    net = Net()
    v = net.init(jax.random.key(0), x)

    def keys(sites):
        return [c.key for c in capture_lib.capture(net, v, x, sites=sites)]

    assert keys(None) == ["block.0.relu_ReLU", "block.1.relu_ReLU"]  # our sites: torch keys
    assert keys("Block") == ["block_0", "block_1"]  # class name -> Flax paths, untouched
    assert keys("ReLU") == ["block.0.relu_ReLU", "block.1.relu_ReLU"]  # an Activation's kind
    assert keys("block_1/fc") == ["block_1/fc"]  # exact path
    assert keys("*/fc") == ["block_0/fc", "block_1/fc"]  # path glob
    assert keys(nn.Dense) == ["block_0/fc", "block_1/fc"]  # a Module class
    # a union; a block is numbered at its call start, before the sites inside it
    assert keys(("Block", "Dense")) == ["block_0", "block_0/fc", "block_1", "block_1/fc"]
    # any Flax capture_intermediates-style predicate (module, method_name) -> bool
    assert keys(lambda m, name: name == "__call__" and m.path == ("block_0",)) == ["block_0"]
    assert keys(lambda m, name: isinstance(m, nn.Dense) and m.path[0] == "block_1") == [
        "block_1/fc"
    ]
    assert keys("NoSuchThing") == []
    with pytest.raises(sites_lib.SiteError, match="not a flax.linen.Module"):
        sites_lib.selector(int)
    with pytest.raises(sites_lib.SiteError, match="expected a predicate"):
        sites_lib.selector(3)
    with pytest.raises(SignatureError, match="selected no call"):
        signature(net, v, x, sites="NoSuchThing")
    # equal shorthands are equal predicates: one compiled forward, not two
    assert sites_lib.selector(("Block", "*/fc")) == sites_lib.selector(("Block", "*/fc"))


def test_feature_reduce_rule():
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(sites_lib.feature_reduce(x), x.mean(axis=(1, 2)))
    np.testing.assert_array_equal(sites_lib.feature_reduce(x, 1), x.mean(axis=(2, 3)))
    np.testing.assert_array_equal(sites_lib.feature_reduce(x[:, 0]), x[:, 0].mean(axis=1))
    np.testing.assert_array_equal(sites_lib.feature_reduce(x[:, 0, 0]), x[:, 0, 0])
    np.testing.assert_array_equal(sites_lib.feature_reduce(x[:, 0, 0, 0]), x[:, :1, 0, 0])
    with pytest.raises(sites_lib.SiteError, match="batch axis"):
        sites_lib.feature_reduce(x, 0)
    with pytest.raises(sites_lib.SiteError, match="out of range"):
        sites_lib.feature_reduce(x, 4)


class _Encoder(nn.Module):
    """Tokens in a dict, dropout, a pre-norm MLP block: nothing like an image model."""

    vocab: int = 50
    dim: int = 16

    @nn.compact
    def __call__(self, batch, deterministic: bool = True):
        h = nn.Embed(self.vocab, self.dim)(batch["tokens"]) + batch["position"][..., None]
        for i in range(2):
            z = nn.LayerNorm(name=f"ln_{i}")(h)
            z = nn.Sequential([nn.Dense(32), nn.gelu, nn.Dense(self.dim)], name=f"mlp_{i}")(z)
            h = h + nn.Dropout(0.5, deterministic=deterministic)(z)
        return h.mean(axis=1)


def test_generic_sites_on_a_token_model_match_flax_capture_intermediates():
    rng = np.random.default_rng(2)
    batch = {
        "tokens": rng.integers(0, 50, size=(10, 7)).astype(np.int32),
        "position": rng.normal(size=(10, 7)).astype(np.float32),
    }
    model = _Encoder()
    variables = model.init(jax.random.key(0), batch)
    calls = capture_lib.capture(
        model, variables, batch, sites="mlp_*", apply_kwargs={"deterministic": True}
    )
    assert [c.key for c in calls] == ["mlp_0", "mlp_1"]
    # Flax's own capture of the full tensors: x of mlp_i = output of ln_i, y = output of mlp_i
    _, state = model.apply(
        variables,
        batch,
        capture_intermediates=lambda m, name: m.name and m.name[:3] in ("ln_", "mlp"),
        mutable=["intermediates"],
    )
    inter = state["intermediates"]
    for i, c in enumerate(calls):
        ln, mlp = inter[f"ln_{i}"]["__call__"][0], inter[f"mlp_{i}"]["__call__"][0]
        # feature axis = last (D); the token axis is averaged. Ours is jitted, Flax's
        # apply is not: float32 round-off of differently fused ops, measured 1.8e-6.
        np.testing.assert_allclose(c.x, np.asarray(ln).mean(axis=1), rtol=0, atol=1e-5)
        np.testing.assert_allclose(c.y, np.asarray(mlp).mean(axis=1), rtol=0, atol=1e-5)
        assert c.x.shape == (10, 16)
    # chunked (every leaf sliced, short chunk padded) == whole batch
    chunked = capture_lib.capture(
        model, variables, batch, sites="mlp_*", apply_kwargs={"deterministic": True}, chunk_size=4
    )
    for a, b in zip(calls, chunked, strict=True):
        np.testing.assert_allclose(a.x, b.x, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.y, b.y, rtol=0, atol=1e-6)
    # dropout on, with rngs: records differ from deterministic ones but are finite and scored
    sig = signature(
        model,
        variables,
        batch,
        sites=("mlp_*", "Dropout"),
        apply_kwargs={"deterministic": False},
        rngs={"dropout": jax.random.key(1)},
        metrics=("aff_score",),
    )
    assert [r["layer"] for r in sig.records()] == ["mlp_0", "Dropout_0", "mlp_1", "Dropout_1"]
    assert all(r["status"] == "ok" for r in sig.records())


def test_selected_site_must_map_batched_arrays():
    class Pair(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x, x

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Pair(name="pair")(x)[0]

    x = np.ones((4, 3), np.float32)
    v = Net().init(jax.random.key(0), x)
    with pytest.raises(SignatureError, match="selected site pair: its output is tuple"):
        signature(Net(), v, x, sites="Pair")
    with pytest.raises(SignatureError, match="same leading"):
        signature(Net(), v, {"a": x, "b": x[:3]}, sites="Pair")


# --------------------------------------------------------------------------- affjax.site


def test_site_makes_function_activations_call_sites():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 16, 16, 3)).astype(np.float32)
    model = ResNet18(num_classes=10, num_filters=8, act=affjax.site(nn.relu))  # the one change
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x[:2])
    # non-trivial BatchNorm statistics and scales, as after training
    variables = jax.tree.map(
        lambda a: a + 0.2 * jnp.asarray(rng.normal(size=a.shape), a.dtype), variables
    )
    sig = signature(model, variables, x, apply_kwargs={"train": False}, metrics=("aff_score",))
    records = sig.records()
    # Flax paths, untouched; two act calls per block; the stem's direct nn.relu stays unseen
    assert [r["layer"] for r in records] == [
        f"ResNetBlock_{b}/relu_{k}" for b in range(8) for k in range(2)
    ]
    assert {r["kind"] for r in records} == {"relu"}
    assert all(r["status"] == "ok" for r in records)
    # The generic path, a predicate picking the same sites, against Flax's own
    # capture_intermediates of the full output tensors: reduced y = their channel mean.
    calls = capture_lib.capture(
        model,
        variables,
        x,
        apply_kwargs={"train": False},
        sites=lambda m, name: isinstance(m, sites_lib.Site),
    )
    _, state = jax.jit(
        lambda v, x: model.apply(
            v,
            x,
            train=False,
            capture_intermediates=lambda m, name: isinstance(m, sites_lib.Site),
            mutable=["intermediates"],
        )
    )(variables, x)
    assert [c.key for c in calls] == [r["layer"] for r in records]
    for c, rec in zip(calls, records, strict=True):
        (y,) = state["intermediates"][c.flax_path[0]][c.flax_path[1]]["__call__"]
        want = np.asarray(y).mean(axis=(1, 2))
        # two compiled graphs, float32: measured 2.6e-6 of the largest value
        assert np.max(np.abs(c.y - want)) <= 1e-5 * np.max(np.abs(want))
        # same arrays as the default path's: the same score
        assert rec["aff_score"] == pytest.approx(float(affinity_score(c.x, c.y).score), abs=1e-9)
    # whole blocks as sites: the non-linearity of a block; strided blocks change width
    blocks = signature(
        model,
        variables,
        x,
        apply_kwargs={"train": False},
        metrics=("aff_score",),
        sites="ResNetBlock",
    ).records()
    assert [r["layer"] for r in blocks] == [f"ResNetBlock_{b}" for b in range(8)]
    assert [r["status"] for r in blocks] == ["ok", "ok"] + ["shape_mismatch", "ok"] * 3
    assert all(np.isnan(r["aff_score"]) for r in blocks if r["status"] == "shape_mismatch")
    # outside any module, a site is just the function
    np.testing.assert_array_equal(affjax.site(nn.relu)(jnp.array([-1.0, 2.0])), [0.0, 2.0])


def test_readme_shows_the_tested_flax_resnet():
    source = (Path(__file__).parent / "flax_imagenet_resnet.py").read_text()
    code = re.search(r"# --- README: flax-imagenet-resnet ---\n(.*)# --- end ---", source, re.S)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert code.group(1).strip() in readme


# --------------------------------------------------------------------------- cross-validation


def test_generic_path_gives_the_builtin_records_on_resnet18():
    module = registry.get("resnet18").build(num_classes=10)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    variables = module.init(jax.random.key(0), x[:1])
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda a: a + 0.3 * jnp.abs(jnp.asarray(rng.normal(size=a.shape), a.dtype)),
            variables["batch_stats"],
        ),
    }
    builtin = capture_lib.capture(module, variables, x, chunk_size=6)
    generic = capture_lib.capture(
        module,
        variables,
        x,
        chunk_size=6,
        sites=lambda m, name: isinstance(m, layers.Activation) and name == "__call__",
    )
    assert len(builtin) == 17
    for a, b in zip(builtin, generic, strict=True):
        assert (a.key, a.call, a.kind, a.functional, a.flax_path) == (
            b.key,
            b.call,
            b.kind,
            b.functional,
            b.flax_path,
        )
        # bit-identical: the same reduction function, traced in the same forward
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert (a.sparsity_x, a.sparsity_y) == (b.sparsity_x, b.sparsity_y)
    metrics = ("aff_score", "cka_score", "sparsity_after")
    want = signature(module, variables, x, metrics=metrics, chunk_size=6)
    got = signature(module, variables, x, metrics=metrics, chunk_size=6, sites="ReLU")
    assert _same_records(got.records(), want.records())


def test_nhwc_check_is_for_our_ports_only():
    module = registry.get("resnet18").build(num_classes=10)
    with pytest.raises(SignatureError, match="NHWC"):
        signature(module, {}, np.zeros((4, 3, 32, 32), np.float32))
    # a user's model takes whatever its __call__ takes (here tabular rows)
    x = np.random.default_rng(5).normal(size=(32, 6)).astype(np.float32)
    mlp = nn.Sequential([nn.Dense(8), affjax.site(partial(nn.gelu, approximate=False))])
    sig = signature(mlp, mlp.init(jax.random.key(0), x), x, metrics=("aff_score",))
    assert [r["layer"] for r in sig.records()] == ["gelu_0"]
