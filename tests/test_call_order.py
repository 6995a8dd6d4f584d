"""The call order of the built-in capture path comes from the forward's own trace.

``capture(sites=None)`` numbers every Activation call inside the jitted forward
(``"affinity_order"``), so a fresh capture traces the model once; the numbers
must give exactly the order :func:`affjax.capture.call_order` finds with its
own ``eval_shape(init)`` trace, which stays the fallback and the answer for
callers without variables.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from affjax import capture as capture_lib
from affjax import site
from affjax.models import get_model, layers, list_models

TRACES: list[str] = []  # appended by _Net at trace time: one entry per trace of the model
FAIL = [False]  # _Net raises at trace time while set


class _Block(nn.Module):
    """A ResNet block's pattern: one ``relu`` module called twice, around another site."""

    @nn.compact
    def __call__(self, x):
        relu = layers.Activation("ReLU", name="relu")
        x = relu(nn.Dense(4, name="fc1")(x))
        x = layers.Activation("GELU", name="act")(x)
        return relu(nn.Dense(4, name="fc2")(x))


class _Net(nn.Module):
    tag: int = 0  # a distinct module per test, so no test meets another's jit cache
    widths: tuple | list = (4,)  # a list makes the module unhashable

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        TRACES.append(self.tag)
        if FAIL[0]:
            raise ValueError("boom at trace time")
        x = layers.Activation("ReLU6", name="stem")(nn.Dense(self.widths[0], name="fc")(x))
        x = _Block(name="layer1")(x)
        x = layers.Activation("ReLU", functional=True, name="f")(x)
        x = site(jnp.tanh, "tanh")(x)
        if mask is not None:
            x = x * mask
        return nn.Dropout(0.5, deterministic=not train)(x)


# (flax_path, kind, functional, key), written out by hand from _Net's code.
EXPECTED = [
    (("stem",), "ReLU6", False, "stem_ReLU6"),
    (("layer1", "relu"), "ReLU", False, "layer1.relu_ReLU"),
    (("layer1", "act"), "GELU", False, "layer1.act_GELU"),
    (("layer1", "relu"), "ReLU", False, "layer1.relu_ReLU"),
    (("f",), "ReLU", True, "f:F.relu"),
    (("tanh_0",), "tanh", False, "tanh_0"),
]
# What capture(functional=True) returns: ReLU6 under both reference keys, call indices per module.
EXPECTED_CALLS = [
    ("stem_Hardtanh", 0),
    ("stem_ReLU6", 0),
    ("layer1.relu_ReLU", 0),
    ("layer1.act_GELU", 0),
    ("layer1.relu_ReLU", 1),
    ("f:F.relu", 0),
    ("tanh_0", 0),
]


def _images(n=7, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


@pytest.fixture
def counted(monkeypatch):
    """Counts call_order's own eval_shape traces; empties its memo and the trace log."""
    calls = []
    real = capture_lib._trace_order

    def trace_order(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(capture_lib, "_trace_order", trace_order)
    monkeypatch.setattr(capture_lib, "_ORDERS", {})
    TRACES.clear()
    yield calls
    FAIL[0] = False


def _init(module, x, **kw):
    variables = module.init(jax.random.key(0), x[:1], **kw)
    TRACES.clear()  # init's own trace is not capture's
    return variables


def _keys(calls):
    return [(c.key, c.call) for c in calls]


def test_fresh_capture_traces_the_model_once_and_leaves_the_order(counted):
    module, x = _Net(tag=1), _images()
    variables = _init(module, x)
    calls = capture_lib.capture(module, variables, x, functional=True)
    assert TRACES == [1] and counted == []  # the forward's trace only
    assert _keys(calls) == EXPECTED_CALLS
    assert capture_lib.call_order(module, x) == EXPECTED  # from capture's memo entry
    assert TRACES == [1] and counted == []
    # Each of relu's calls gets its own record: its inputs, recomputed in float64.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    a = np.clip(x @ p["fc"]["kernel"] + p["fc"]["bias"], 0, 6) @ p["layer1"]["fc1"]["kernel"]
    a += p["layer1"]["fc1"]["bias"]
    g = np.maximum(a, 0) * 0.5 * (1 + scipy.special.erf(np.maximum(a, 0) / np.sqrt(2)))
    c = g @ p["layer1"]["fc2"]["kernel"] + p["layer1"]["fc2"]["bias"]
    # float32 forward at HIGHEST against float64: ~1e-7 relative; 1e-5 leaves room
    np.testing.assert_allclose(calls[2].x, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(calls[4].x, c, rtol=1e-5, atol=1e-5)


def test_order_equals_the_eval_shape_order(counted):
    module, x = _Net(tag=2), _images()
    assert capture_lib.call_order(module, x) == EXPECTED  # eval_shape(init) trace
    assert len(counted) == 1
    capture_lib._ORDERS.clear()
    capture_lib.capture(module, _init(module, x), x)
    assert capture_lib._ORDERS[next(iter(capture_lib._ORDERS))] == tuple(EXPECTED)
    assert len(counted) == 1


def test_chunks_retraces_and_rngs(counted):
    module, x = _Net(tag=3), _images()
    variables = _init(module, x)
    whole = capture_lib.capture(module, variables, x, functional=True)
    chunked = capture_lib.capture(module, variables, x, chunk_size=3, functional=True)
    other = capture_lib.capture(module, variables, x[:5], functional=True)  # another shape
    assert TRACES == [3, 3, 3] and counted == []  # n = 7, chunks of 3, n = 5
    for a, b, c in zip(whole, chunked, other, strict=True):
        assert (a.key, a.call) == (b.key, b.call) == (c.key, c.call)
        np.testing.assert_allclose(a.x, b.x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.x[:5], c.x, rtol=1e-6, atol=1e-6)
    # static keywords and rng names are part of the memo key
    rngs = {"dropout": jax.random.key(1)}
    train = capture_lib.capture(
        module, variables, x, functional=True, apply_kwargs={"train": True}, rngs=rngs
    )
    assert _keys(train) == EXPECTED_CALLS and counted == []
    assert capture_lib.call_order(module, x, {"train": True}, rngs) == EXPECTED
    assert counted == [] and len(capture_lib._ORDERS) == 2


def test_unhashable_module_and_array_keywords_are_not_memoised(counted):
    x = _images()
    unhashable, module = _Net(tag=4, widths=[4]), _Net(tag=5)
    v_unhashable, variables = _init(unhashable, x), _init(module, x)
    calls = capture_lib.capture(unhashable, v_unhashable, x, functional=True)
    assert _keys(calls) == EXPECTED_CALLS
    mask = np.ones((1, 4), np.float32)
    kw = {"functional": True, "apply_kwargs": {"mask": mask}}
    assert _keys(capture_lib.capture(module, variables, x, **kw)) == EXPECTED_CALLS
    assert TRACES == [4, 5] and counted == [] and capture_lib._ORDERS == {}
    # call_order still answers them, with its own trace
    assert capture_lib.call_order(unhashable, x) == EXPECTED and len(counted) == 1


def test_a_failed_trace_leaves_nothing_behind(counted):
    module, x = _Net(tag=6), _images()
    variables = _init(module, x)
    FAIL[0] = True
    with pytest.raises(ValueError, match="boom"):
        capture_lib.capture(module, variables, x)
    FAIL[0] = False
    assert capture_lib._ORDERS == {}
    assert _keys(capture_lib.capture(module, variables, x, functional=True)) == EXPECTED_CALLS
    assert TRACES == [6, 6] and counted == []


def test_irregular_numbers_fall_back_to_call_order(counted, monkeypatch):
    # A lifted transform (nn.scan) stacks the numbers, a replayed trace repeats them.
    name = "ReLU||relu_ReLU"
    assert capture_lib._order_of({"relu": {name: (np.arange(3, dtype=np.int32),)}}) is None
    assert capture_lib._order_of({"relu": {name: (np.int32(0), np.int32(0))}}) is None
    assert capture_lib._order_of({"relu": {name: (np.int32(1),)}}) is None
    assert capture_lib._order_of({}) == ()
    monkeypatch.setattr(capture_lib, "_order_of", lambda tree: None)
    module, x = _Net(tag=7), _images()
    calls = capture_lib.capture(module, _init(module, x), x, functional=True)
    assert _keys(calls) == EXPECTED_CALLS and len(counted) == 1


def _forward_order(module, size: int) -> tuple:
    """The order ``_forward`` numbers, read off its jaxpr (the numbers are literals)."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = capture_lib.strip_collections(jax.eval_shape(module.init, jax.random.key(0), x))
    fn = functools.partial(capture_lib._forward.__wrapped__, module)
    outvars = jax.make_jaxpr(fn)(variables, x).jaxpr.outvars
    tree = jax.tree.unflatten(jax.tree.structure(jax.eval_shape(fn, variables, x)), outvars)
    return capture_lib._order_of(jax.tree.map(lambda v: v.val, tree[1]))


def _assert_same_order(name: str, size: int) -> None:
    module = get_model(name)
    x = (1, size, size, 3)
    want = capture_lib._trace_order(module, *capture_lib._order_parts(
        jax.ShapeDtypeStruct(x, jnp.float32), None, None))  # fmt: skip
    got = _forward_order(module, size)
    assert got == want, f"{name}: forward order differs from eval_shape(init)'s"
    assert len(got) > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_zoo_forward_order_equals_eval_shape_order(name):
    # resnet18: relu called 2x per block; mobilenet_v2: ReLU6; googlenet: all functional
    _assert_same_order(name, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_forward_order_equals_eval_shape_order(name):
    _assert_same_order(name, 299 if name == "inception_v3" else 224)
