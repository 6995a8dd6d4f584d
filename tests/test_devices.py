"""Signatures on many devices (affjax/devices.py).

The 4-device checks run tests/devices_worker.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag must be set before
JAX starts); the rest runs here, on however many devices this process has.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from affjax import cli, devices, signature
from affjax.signature import SignatureError

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """The worker's measurements, from a process with 4 CPU devices."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path_factory.mktemp("devices")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "devices_worker.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_scores_equal_single_device_on_the_same_features(four_devices):
    # stacks of 2 and 1 calls padded to 4 with copies, one call per device
    assert four_devices["score_diff"] <= 1e-12  # measured 0.0


def test_sharded_signature_equals_single_device_with_the_same_per_device_shape(four_devices):
    # 22 images (not a multiple of 4) padded to 24, 6 per device. One device with
    # chunks of 6 runs the same float32 shapes: bit-identical features, so every
    # float64 metric agrees to round-off.
    assert four_devices["devices_meta"] == 4
    assert four_devices["same_shape_feature_diff"] == 0.0
    assert four_devices["same_shape_diff"] <= 1e-12  # measured 0.0
    assert four_devices["chunked_diff"] <= 1e-12  # chunk 5 -> 8 over 4 devices vs chunks of 2
    assert four_devices["sites_diff"] <= 1e-12  # generic sites= path, devices="all"


def test_sharded_signature_against_whole_batch_single_device(four_devices):
    # The whole batch (22) on one device reduces in other float32 tiles than 6 per
    # device (XLA:CPU's spatial mean differs by 1 ulp, as with chunk_size), so the
    # scores differ at float32 feature round-off: measured 3.8e-8 (r2_score); the
    # chunked-forward tolerance of tests/test_signature.py applies.
    assert four_devices["whole_batch_diff"] <= 5e-7


def test_cli_devices_end_to_end(four_devices):
    # affjax signature --devices 4: resnet18 (random-filled), 6 images of 16 px
    assert four_devices["cli_status"] == 0
    assert four_devices["cli_devices"] == 4 and four_devices["cli_calls"] == 17
    assert four_devices["cli_diff"] <= 1e-12  # vs the API on one device, chunks of 2


def test_scoring_follows_the_callers_default_device(four_devices):
    # Thread-local jax.default_device reaches the scoring and preparing threads. Scored
    # from the main thread: the kernels ran on device 2 and were compiled by the
    # preparing threads only (for that device: scoring compiled nothing again). Then
    # from two threads: on device 2 too, reusing those kernels. Records are the
    # device-0 ones to the bit.
    one, two = four_devices["default_device_1"], four_devices["default_device_2"]
    assert one["compiled_by"] == ["affjax-kernels"] and one["compiles"] >= 2, one
    assert two["compiles"] == 0, two
    for got in (one, two):
        assert got["placed"] == [2], got
        assert got["diff"] == 0.0, got


def test_mesh_for():
    n = len(jax.local_devices())
    assert devices.mesh_for(None).devices.shape == (1,)
    assert devices.mesh_for(1).axis_names == ("data",)
    assert devices.device_count(devices.mesh_for("all")) == jax.device_count()
    assert list(devices.mesh_for(jax.local_devices()[:1]).devices) == jax.local_devices()[:1]
    with pytest.raises(devices.DeviceError, match="local"):
        devices.mesh_for(n + 1)
    for bad in (0, "some", [], True):
        with pytest.raises(devices.DeviceError):
            devices.mesh_for(bad)
    assert devices.resolve() is None
    with pytest.raises(devices.DeviceError, match="'data'"):
        devices.resolve(mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("batch",)))
    with pytest.raises(devices.DeviceError, match="not both"):
        devices.resolve(1, devices.mesh_for(1))


def test_one_device_mesh_takes_the_sharded_path_and_agrees():
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)

    import flax.linen as nn

    from affjax.models import layers

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.Activation("Tanh", name="act")(nn.Dense(4)(x))

    module = Mlp()
    variables = module.init(jax.random.key(0), x)
    a = signature(module, variables, x, metrics=("aff_score", "r2_score"))
    b = signature(module, variables, x, metrics=("aff_score", "r2_score"), devices=1)
    assert b.meta["devices"] == 1
    np.testing.assert_allclose(b.scores(), a.scores(), rtol=0, atol=1e-12)
    with pytest.raises(SignatureError, match="device"):
        signature(module, variables, x, devices=len(jax.local_devices()) + 1)


@pytest.mark.parametrize("n", [0, 1, 5, 12, 13, 2047])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_process_slice_covers_the_batch_in_order(n, count):
    slices = [devices.process_slice(n, i, count) for i in range(count)]
    assert np.array_equal(np.concatenate([np.arange(n)[s] for s in slices]), np.arange(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    # what gather_slices does across processes: pad to equal length, stack, unpad
    longest = -(-n // count)
    pad = [np.full(longest - (s.stop - s.start), -1) for s in slices]
    parts = zip(slices, pad, strict=True)
    stacked = np.stack([np.concatenate([np.arange(n)[s], p]) for s, p in parts])
    assert np.array_equal(devices.unpad_slices(stacked, n), np.arange(n))


def test_process_slice_defaults_and_errors():
    assert devices.process_slice(10) == slice(0, 10)  # one process here
    assert devices.process_slice(10, 3, 4) == slice(8, 10)
    with pytest.raises(devices.DeviceError):
        devices.process_slice(10, 4, 4)
    local = {"images": np.arange(6.0)[:, None]}
    assert np.array_equal(devices.gather_slices(local, 6)["images"], local["images"])


def test_pad_batch_repeats_real_samples():
    tree = {"a": np.arange(3), "b": np.arange(6).reshape(3, 2)}
    padded, m = devices.pad_batch(tree, 4)
    assert m == 3 and padded["a"].tolist() == [0, 1, 2, 0]
    assert padded["b"][3].tolist() == [0, 1]
    padded, m = devices.pad_batch({"a": np.arange(2)}, 8)  # more padding than samples
    assert padded["a"].tolist() == [0, 1] * 4
    same, m = devices.pad_batch(tree, 3)
    assert same is tree and m == 3


def test_cli_devices_option(capsys, tmp_path):
    argv = ["signature", "x", "--variables", "missing", "--devices"]
    with pytest.raises(SystemExit):
        cli.main([*argv, "0", "--out", str(tmp_path)])
    assert "positive number or 'all'" in capsys.readouterr().err
    assert cli._devices_option("all") == "all" and cli._devices_option("3") == 3
