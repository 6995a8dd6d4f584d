"""affjax.checkpoint: both layouts give back every variable bit for bit; bad files say so."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from affjax import checkpoint, models


@functools.cache
def _init():
    module = models.get_model("squeezenet1_1", num_classes=10)
    return module, jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def _model():
    module, variables = _init()
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    # Dtypes beyond float32, odd sizes (offsets off the 64-byte grid) and a scalar.
    variables["params"]["extra"] = {
        "bf16": jnp.arange(7, dtype=jnp.bfloat16),
        "f64": np.linspace(0, 1, 5),
        "i32": np.arange(3, dtype=np.int32).reshape(1, 3),
        "scalar": np.float32(2.5),
    }
    return module, variables


@pytest.mark.parametrize("layout", ["msgpack", "raw"])
def test_layouts_round_trip_bit_for_bit(tmp_path, layout):
    module, variables = _model()
    path = tmp_path / f"m.{layout}"
    checkpoint.save_variables(
        path, "squeezenet1_1", module, variables, meta={"a": 1}, layout=layout
    )
    name, got_module, got, meta = checkpoint.load_variables(path)
    assert (name, got_module, meta) == ("squeezenet1_1", module, {"a": 1})
    want = jax.tree.leaves_with_path(variables)
    have = jax.tree.leaves_with_path(got)
    assert [p for p, _ in have] == [p for p, _ in want]
    for (path_, a), (_, b) in zip(have, want, strict=True):
        b = np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, path_
        np.testing.assert_array_equal(np.asarray(a), b)
        if layout == "raw":  # views at 64-byte boundaries: JAX's CPU client takes them as they are
            assert np.asarray(a).ctypes.data % 64 == 0, path_


def test_raw_layout_is_what_the_header_says(tmp_path):
    module, variables = _model()
    path = tmp_path / "m.raw"
    checkpoint.save_variables(path, "squeezenet1_1", module, variables, layout="raw")
    data = path.read_bytes()
    assert data.startswith(checkpoint._MAGIC)
    n_arrays = len(jax.tree.leaves(variables))
    payload = checkpoint._read(path)
    assert payload["format"] == checkpoint.RAW_FORMAT
    assert len(jax.tree.leaves(payload["variables"])) == n_arrays
    total = sum(np.asarray(v).nbytes for v in jax.tree.leaves(variables))
    # Padding only to the next 64 bytes per array and after the header.
    assert total <= len(data) <= total + 64 * (n_arrays + 1) + 4096


@pytest.mark.parametrize("cut", [4, 20, 200, -1])
def test_truncated_raw_file_is_an_error_that_says_what_to_do(tmp_path, cut):
    module, variables = _model()
    path = tmp_path / "m.raw"
    checkpoint.save_variables(path, "squeezenet1_1", module, variables, layout="raw")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="not an affjax variables file.*affjax convert"):
        checkpoint.load_variables(path)


def test_unknown_layout_is_refused(tmp_path):
    module, variables = _model()
    with pytest.raises(ValueError, match="layout must be"):
        checkpoint.save_variables(tmp_path / "m", "squeezenet1_1", module, variables, layout="npz")
