"""Stored traces of zoo forwards (affjax.traces): same records as jax.jit, read back in a
fresh process, keyed on everything that shapes the trace, never an error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from random_variables import random_variables

from affjax import capture as capture_lib
from affjax import traces
from affjax.models import registry


@pytest.fixture
def folder(tmp_path, monkeypatch):
    where = tmp_path / "affjax-traces"
    monkeypatch.setattr(traces, "directory", lambda: where)
    monkeypatch.setattr(traces, "_LOADED", {})
    return where


def _resnet(n=6, size=32):
    module = registry.get("resnet18").build(num_classes=10)
    x = np.random.default_rng(0).normal(size=(n, size, size, 3)).astype(np.float32)
    return module, random_variables(module, x.shape, np.random.default_rng(1)), x


def _arrays(calls):
    return [(c.key, c.call, c.x, c.y, c.sparsity_x, c.sparsity_y) for c in calls]


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u[:2] == v[:2] and u[4:] == v[4:]
        np.testing.assert_array_equal(u[2], v[2])  # bit for bit: the same program
        np.testing.assert_array_equal(u[3], v[3])


def _files(where):
    return sorted(where.glob("*.jaxexport")) if where.exists() else []


def test_stored_trace_gives_the_plain_records_and_is_read_back(folder, monkeypatch):
    module, variables, x = _resnet()
    stored = _arrays(capture_lib.capture(module, variables, x))
    assert len(_files(folder)) == 1
    monkeypatch.setattr(traces, "directory", lambda: None)  # the plain jax.jit path
    plain = _arrays(capture_lib.capture(module, variables, x))
    _same(stored, plain)
    assert len(stored) == 17

    # A new process's view: nothing in memory, the file on disk, nothing exported.
    monkeypatch.setattr(traces, "directory", lambda: folder)
    monkeypatch.setattr(traces, "_LOADED", {})

    def no_export(*a, **k):
        raise AssertionError("exported again although the trace is stored")

    monkeypatch.setattr(jax.export, "export", no_export)
    _same(_arrays(capture_lib.capture(module, variables, x)), plain)
    assert len(_files(folder)) == 1


def test_key_follows_shapes_precision_and_module_fields(folder):
    module, variables, x = _resnet()
    capture_lib.capture(module, variables, x)
    capture_lib.capture(module, variables, x, chunk_size=4)  # another batch shape
    capture_lib.capture(module, variables, x, forward_precision="default")
    assert len(_files(folder)) == 3
    capture_lib.capture(module, variables, x)  # nothing new
    assert len(_files(folder)) == 3
    other = module.clone(num_classes=7)
    assert traces.module_key(other) != traces.module_key(module)
    assert traces.module_key(module) == traces.module_key(module.clone())


def test_only_zoo_modules_with_stable_fields_are_stored(folder):
    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            from affjax.models import layers

            return layers.Activation("ReLU")(nn.Dense(8)(x.reshape(x.shape[0], -1)))

    x = np.random.default_rng(0).normal(size=(6, 4, 4, 3)).astype(np.float32)
    mlp = Mlp()
    calls = capture_lib.capture(mlp, mlp.init(jax.random.key(0), x), x)
    assert len(calls) == 1 and _files(folder) == []
    assert traces.module_key(mlp) is None
    module, _, _ = _resnet()
    assert traces.module_key(module) is not None
    # A field with no stable description (a lambda, another package's function).
    assert traces.module_key(module.clone(block=lambda *a, **k: None)) is None
    assert traces.module_key(module.clone(block=np.sum)) is None
    assert json.loads(traces.module_key(module))[0] == "affjax.models.resnet.ResNet"


def test_damaged_unwritable_or_unexportable_falls_back(folder, monkeypatch):
    module, variables, x = _resnet()
    want = _arrays(capture_lib.capture(module, variables, x))
    (path,) = _files(folder)
    path.write_bytes(b"not an export")
    monkeypatch.setattr(traces, "_LOADED", {})
    _same(_arrays(capture_lib.capture(module, variables, x)), want)
    assert path.read_bytes() != b"not an export"  # exported again, atomically replaced

    blocked = folder.parent / "file"
    blocked.write_text("")  # a file where the folder should be: nothing can be written
    monkeypatch.setattr(traces, "directory", lambda: blocked / "traces")
    monkeypatch.setattr(traces, "_LOADED", {})
    _same(_arrays(capture_lib.capture(module, variables, x)), want)

    def refuse(*a, **k):
        raise ImportError("Please install 'flatbuffers' in order to use Exported serialization")

    monkeypatch.setattr(traces, "directory", lambda: folder / "other")
    monkeypatch.setattr(jax.export, "export", refuse)
    _same(_arrays(capture_lib.capture(module, variables, x)), want)
    assert _files(folder / "other") == []


def test_least_recently_used_traces_go_beyond_the_cap(folder, monkeypatch):
    module, variables, x = _resnet()
    capture_lib.capture(module, variables, x)
    (first,) = _files(folder)
    monkeypatch.setattr(traces, "MAX_BYTES", first.stat().st_size + 1)
    capture_lib.capture(module, variables, x, chunk_size=4)
    (second,) = _files(folder)
    assert second != first


def test_off_switch_and_place(monkeypatch):
    where = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("AFFJAX_TRACES", raising=False)
    assert traces.directory() == (Path(where) / "affjax-traces" if where else None)
    monkeypatch.setenv("AFFJAX_TRACES", "off")
    assert traces.directory() is None
    monkeypatch.setenv("AFFJAX_TRACES", "FALSE")
    assert traces.directory() is None
    monkeypatch.setenv("AFFJAX_TRACES", "1")
    assert traces.directory() == (Path(where) / "affjax-traces" if where else None)
    monkeypatch.setenv("AFFJAX_TRACES", "maybe")
    with pytest.raises(ValueError, match="AFFJAX_TRACES='maybe' is neither on nor off"):
        traces.directory()


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from random_variables import random_variables
    from affjax import capture, compilation_cache, traces
    from affjax.models import registry

    compilation_cache.enable(sys.argv[1])
    if sys.argv[3] == "read":
        def no_export(*a, **k):
            raise AssertionError("exported again in a fresh process")
        jax.export.export = no_export
    module = registry.get("resnet18").build(num_classes=10)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    v = random_variables(module, x.shape, np.random.default_rng(1))
    calls = capture.capture(module, v, x)
    np.save(sys.argv[4], np.concatenate([c.y.ravel() for c in calls]))
    print(len(list(traces.directory().iterdir())))
    """
)


def test_a_fresh_process_reads_the_trace_another_one_stored(tmp_path):
    tests = str(Path(__file__).parent)
    outs = []
    for mode in ("write", "read"):
        out = tmp_path / f"{mode}.npy"
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / "jax"), tests, mode, str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split()[-1] == "1"
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_score_kernels_are_stored_and_read_back(folder, monkeypatch):
    import importlib

    from affjax.capture import Call

    signature_lib = importlib.import_module("affjax.signature")
    rng = np.random.default_rng(3)
    calls = []
    for d in (8, 40):
        x = rng.normal(size=(48, d)).astype(np.float32)
        y = np.maximum(x + 0.2, 0).astype(np.float32)
        calls.append(Call(f"d{d}", 0, "ReLU", False, (), x, y, None, None, 0.1, 0.4))

    def scores():
        return signature_lib.score_calls(calls, solver="host")

    stored = scores()
    names = sorted(p.name for p in _files(folder))
    assert len(names) == 2  # _score_group for each of two buckets (scores finish in numpy)
    monkeypatch.setattr(traces, "directory", lambda: None)
    plain = scores()
    assert stored == plain  # every field, bit for bit
    assert np.isfinite(plain[0]["aff_score"]) and plain[0]["aff_score"] > 0
    monkeypatch.setattr(traces, "directory", lambda: folder)
    monkeypatch.setattr(traces, "_LOADED", {})

    def no_export(*a, **k):
        raise AssertionError("exported again although the trace is stored")

    monkeypatch.setattr(jax.export, "export", no_export)
    assert scores() == plain
    assert sorted(p.name for p in _files(folder)) == names
