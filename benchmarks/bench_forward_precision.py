"""What ``forward_precision="default"`` would cost on a TPU, measured on any backend.

A TPU's default float32 matmul/conv is one bfloat16 pass: both operands rounded
to bfloat16, products accumulated in float32. This emulates it exactly that way
(``affjax.precision.bf16_kernels`` + ``bf16_inputs``) and compares each call's
scores with the ``"highest"`` forward, the score math in float64 for both, so
the difference is the forward's alone.

    python benchmarks/bench_forward_precision.py --model resnet18 --n 256 --size 224
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from affjax import capture, signature
from affjax import precision as precision_lib

METRICS = ("aff_score", "cka_score", "r2_score")


def emulated_default(module, variables, images, **kwargs):
    """The signature with a bf16-pass forward (TPU default), scores as asked."""
    capture._forward.clear_cache()  # the emulation acts at trace time
    try:
        with precision_lib.bf16_inputs():
            return signature(
                module,
                precision_lib.bf16_kernels(variables),
                images,
                forward_precision="default",
                **kwargs,
            )
    finally:
        capture._forward.clear_cache()


def compare(module, variables, images, *, metrics=METRICS, chunk_size=64, dtype="float64"):
    """Per-call ``|default - highest|`` of every metric: ``{metric: [n_calls]}`` and records."""
    kw = dict(metrics=metrics, chunk_size=chunk_size, dtype=dtype, solver="host")
    high = signature(module, variables, images, **kw).records()
    low = emulated_default(module, variables, images, **kw).records()
    pairs = list(zip(high, low, strict=True))
    diffs = {m: np.array([abs(a[m] - b[m]) for a, b in pairs]) for m in metrics}
    return diffs, high


def main(argv=None):
    from converters.torchvision import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["resnet18", "densenet121"])
    p.add_argument("--n", type=int, nargs="+", default=[256, 128], help="batch per model")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/forward_precision.json")
    args = p.parse_args(argv)
    rows = []
    print(f"{'model':12s} {'n':>4s} {'calls':>5s} {'metric':10s} {'max':>8s} {'median':>8s} worst")
    for name, n in zip(args.model, args.n * len(args.model), strict=False):
        loaded = load(name, "random", seed=0)
        rng = np.random.default_rng(0)
        images = rng.normal(size=(n, args.size, args.size, 3)).astype(np.float32)
        t = time.perf_counter()
        diffs, records = compare(
            loaded.module, loaded.variables, images, chunk_size=args.chunk_size
        )
        row = {"model": name, "n": n, "size": args.size, "seconds": time.perf_counter() - t}
        for m, dv in diffs.items():
            # r2 is NaN where ill-posed (n <= d + 1): over the other calls.
            worst = int(np.nanargmax(dv))
            key = f"{records[worst]['layer']}[{records[worst]['call']}]"
            row[m] = {"max": float(np.nanmax(dv)), "median": float(np.nanmedian(dv)), "worst": key}
            row[m]["calls"] = int(np.sum(np.isfinite(dv)))
            row[m]["per_call"] = dv.tolist()
            print(
                f"{name:12s} {n:4d} {row[m]['calls']:5d} {m:10s} {row[m]['max']:8.1e} "
                f"{row[m]['median']:8.1e} {key}"
            )
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
