"""Run by tests/test_devices.py in a subprocess that sees 4 CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts,
so this runs in its own process. Prints one JSON object of measured differences.
"""

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from affjax import capture, devices, signature
from affjax.models import layers
from affjax.signature import score_calls

# The float metrics but the entropies (fewer compiles; they bin the same float32 features).
METRICS = ("aff_score", "aff_score_corrected", "cka_score", "norm_diff", "r2_score")


class Net(nn.Module):
    """Four sites in three width buckets (2 + 1 + 1 calls: none divides by 4)."""

    @nn.compact
    def __call__(self, x):
        x = layers.Activation("ReLU", name="a1")(nn.Conv(8, (3, 3))(x))
        x = layers.Activation("GELU", name="a2")(nn.Conv(8, (3, 3))(x))
        x = layers.Activation("Tanh", name="a3")(nn.Conv(16, (3, 3))(x))
        return layers.Activation("GELU", name="a4")(nn.Dense(12)(x.mean((1, 2))))


def max_diff(a: list[dict], b: list[dict]) -> float:
    """Largest |difference| over every float field of two record lists (NaN == NaN)."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        assert ra["layer"] == rb["layer"] and ra["status"] == rb["status"], (ra, rb)
        for k, v in ra.items():
            if isinstance(v, float) and not (np.isnan(v) and np.isnan(rb[k])):
                worst = max(worst, abs(v - rb[k]))
    return worst


def feature_diff(a, b) -> float:
    return max(float(np.abs(p.x - q.x).max()) for p, q in zip(a, b, strict=True))


def main(out_dir: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    x = np.random.default_rng(0).normal(size=(22, 8, 8, 3)).astype(np.float32)  # 22 % 4 != 0
    module = Net()
    variables = module.init(jax.random.key(0), x[:1])
    mesh = devices.mesh_for(4)
    res = {}

    # the score stage on identical features: stacks of 2 and 1 calls padded to 4
    calls = capture.capture(module, variables, x)
    res["score_diff"] = max_diff(
        score_calls(calls, metrics=METRICS), score_calls(calls, metrics=METRICS, mesh=mesh)
    )

    # the whole signature: 22 samples padded to 24, 6 per device
    one = signature(module, variables, x, metrics=METRICS)
    four = signature(module, variables, x, devices=4, metrics=METRICS)
    res["devices_meta"] = four.meta["devices"]
    res["whole_batch_diff"] = max_diff(one.records(), four.records())
    # the same per-device shape on one device: chunks of 6 (the last, 4, padded to 6)
    same_shape = signature(module, variables, x, chunk_size=6, metrics=METRICS)
    res["same_shape_diff"] = max_diff(same_shape.records(), four.records())
    res["same_shape_feature_diff"] = feature_diff(
        capture.capture(module, variables, x, chunk_size=6),
        capture.capture(module, variables, x, mesh=mesh),
    )
    # chunked and sharded: chunks of 8 (5 rounds up to 8), 2 per device
    res["chunked_diff"] = max_diff(
        signature(module, variables, x, chunk_size=2, metrics=METRICS).records(),
        signature(module, variables, x, chunk_size=5, mesh=mesh, metrics=METRICS).records(),
    )
    # generic sites path (sites=), "all" devices
    res["sites_diff"] = max_diff(
        signature(module, variables, x, sites="Conv", chunk_size=6, metrics=METRICS).records(),
        signature(module, variables, x, sites="Conv", devices="all", metrics=METRICS).records(),
    )
    res.update(run_cli(Path(out_dir)))
    res.update(default_device_scoring(module, variables, x, one.records()))
    print(json.dumps(res))


def default_device_scoring(module, variables, x, plain: list[dict]) -> dict:
    """A signature under ``jax.default_device(device 2)`` with the score kernels prepared
    ahead, scored from the main thread (the accelerator path) and from two threads:
    where the kernels ran, which threads compiled them, and the records' difference."""
    import importlib
    import os
    import threading

    signature_lib = importlib.import_module("affjax.signature")
    target = jax.devices()[2]
    placed, compiled = set(), []
    stored_or_jit = signature_lib._stored_or_jit

    def spy(name, jitted, args, **static):
        if name.endswith("_score_group"):
            placed.update(d.id for d in args[0].devices())
        return stored_or_jit(name, jitted, args, **static)

    def on_compile(event, secs, **kwargs):
        name = str(kwargs.get("fun_name"))
        if event == "/jax/core/compile/backend_compile_duration" and "_group" in name:
            compiled.append(threading.current_thread().name.split("_")[0])

    signature_lib._stored_or_jit = spy
    jax.monitoring.register_event_duration_secs_listener(on_compile)
    out = {}
    os.environ["AFFJAX_PREPARE_KERNELS"] = "on"
    for workers in ("1", "2"):
        os.environ["AFFJAX_SCORE_WORKERS"] = workers
        placed.clear()
        compiled.clear()
        with jax.default_device(target):
            got = signature(module, variables, x, metrics=METRICS).records()
        out[f"default_device_{workers}"] = {
            "placed": sorted(placed),
            "compiled_by": sorted(set(compiled)),
            "compiles": len(compiled),
            "diff": max_diff(got, plain),
        }
    return out


def run_cli(tmp: Path) -> dict:
    """``affjax signature --devices 4`` on a random-filled resnet18, 6 images of 16 px."""
    from random_variables import random_variables

    from affjax import cli
    from affjax.checkpoint import save_variables
    from affjax.models import get_model

    module = get_model("resnet18")
    rng = np.random.default_rng(0)
    variables = random_variables(module, (1, 16, 16, 3), rng)
    save_variables(tmp / "r18.msgpack", "resnet18", module, variables)
    images = rng.normal(size=(6, 16, 16, 3)).astype(np.float32)
    np.save(tmp / "images.npy", images)
    argv = [
        "signature", "--variables", str(tmp / "r18.msgpack"), "--images",
        str(tmp / "images.npy"), "--batch-size", "6", "--metrics", "aff_score",
        "--devices", "4", "--quiet", "--out", str(tmp),
    ]  # fmt: skip
    status = cli.main(argv)
    payload = json.loads((tmp / "resnet18_images_6_0.json").read_text())
    got = [r["aff_score"] for r in payload["records"]]
    # the same per-device shape on one device: 6 -> 8 images, 2 per device
    want = signature(module, variables, images, chunk_size=2, metrics=("aff_score",)).scores()
    return {
        "cli_status": status,
        "cli_devices": payload["meta"]["devices"],
        "cli_calls": len(got),
        "cli_diff": float(np.max(np.abs(np.asarray(got) - want))),
    }


if __name__ == "__main__":
    main(*sys.argv[1:])
