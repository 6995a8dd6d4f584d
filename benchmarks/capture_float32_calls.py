"""Captures reduced activations of seeded torchvision models once, for float32-vs-float64 studies.

    python benchmarks/capture_float32_calls.py resnet18:256:64 densenet121:128:32 alexnet:256:64

writes ``/tmp/float32_calls/{model}_n{batch}_s{size}.npz`` with ``x{i}``, ``y{i}``
(float32 ``[n, d]``) and ``keys`` (``layer#call``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from parity_helpers import nhwc_images, seeded_model  # noqa: E402

from affjax.capture import capture  # noqa: E402
from converters.torchvision import convert  # noqa: E402

OUT = Path("/tmp/float32_calls")


def main(specs):
    OUT.mkdir(exist_ok=True)
    for spec in specs:
        name, n, size = spec.split(":")
        n, size = int(n), int(size)
        model = seeded_model(name)
        module, variables = convert(model, name)
        images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))
        with jax.default_matmul_precision("highest"):
            calls = capture(module, variables, nhwc_images(images), chunk_size=32)
        arrays = {}
        for i, c in enumerate(calls):
            arrays[f"x{i}"], arrays[f"y{i}"] = np.asarray(c.x), np.asarray(c.y)
        keys = np.array([f"{c.key}#{c.call}" for c in calls])
        np.savez(OUT / f"{name}_n{n}_s{size}.npz", keys=keys, **arrays)
        print(name, len(calls), sorted({c.x.shape[1] for c in calls}))


if __name__ == "__main__":
    main(sys.argv[1:])
