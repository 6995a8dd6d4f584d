"""affjax's XLA:CPU options (affjax.xla_options) against XLA's defaults, on your CPU.

Times a torchvision port's jitted forward pass (HIGHEST precision, seeded
weights and N(0, 1) images) compiled twice in one process: with
``affjax.xla_options.jit`` and with plain ``jax.jit``, alternated rep by rep so
both see the same machine load. Reports the medians, their ratio and the
largest |Δ logit| / max |logit| between the two (same float32 products, other
kernels). If the ratio is below 1 on your machine, set ``AFFJAX_CPU_OPTIONS=off``.

    python benchmarks/bench_cpu_options.py --model resnet18 densenet121 alexnet --batch 256
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from affjax import precision, xla_options

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, batch: int, size: int, reps: int) -> dict:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from parity_helpers import seeded_model

    from converters.torchvision import convert

    module, variables = convert(seeded_model(name), name)
    images = jnp.asarray(
        np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
    )

    def apply(v, x):
        with precision.matmul_scope("highest"):
            return module.apply(v, x)

    runs = {"affjax options": xla_options.jit(apply), "XLA defaults": jax.jit(apply)}
    out, times = {}, {k: [] for k in runs}
    for k, f in runs.items():
        s = time.perf_counter()
        out[k] = np.asarray(jax.block_until_ready(f(variables, images)))
        times[k + " compile+first"] = time.perf_counter() - s
    for _ in range(reps):
        for k, f in runs.items():
            s = time.perf_counter()
            jax.block_until_ready(f(variables, images))
            times[k].append(time.perf_counter() - s)
    ours, default = (statistics.median(times[k]) for k in runs)
    a, b = out.values()
    return {
        "model": name,
        "batch": batch,
        "options": xla_options.compiler_options(),
        "affjax_s": ours,
        "default_s": default,
        "speedup": default / ours,
        "rel_max_diff": float(np.abs(a - b).max() / np.abs(b).max()),
        "times": times,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["resnet18"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_options.json"))
    args = p.parse_args(argv)
    rows = []
    print("| model | batch | affjax options s | XLA defaults s | speedup | max |Δ logit| rel |")
    print("|---|---|---|---|---|---|")
    for name in args.model:
        r = bench(name, args.batch, args.size, args.reps)
        rows.append(r)
        print(
            f"| {name} | {r['batch']} | {r['affjax_s']:.2f} | {r['default_s']:.2f} | "
            f"{r['speedup']:.2f} | {r['rel_max_diff']:.1e} |",
            flush=True,
        )
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu": platform.processor()}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("wrote", args.out)
    return rows


if __name__ == "__main__":
    main()
