"""float32 time per score, the factored Bures map (issue 8.4) against the published form.

Side by side in one process, alternating, so both see the same machine load.
The published float32 form is rebuilt by tracing the kernel with the factor
and factored map swapped for the dense covariance and the two-eigh map (what
``score.affinity`` ran in float32 before). float64 for scale. Inputs as
bench_score.py: ``x ~ N(0, 1)`` mixed by a random matrix, ``y = relu(x)``.

    python benchmarks/bench_float32_map.py --n 2048 --d 512 --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from affjax import score as score_lib
from affjax.math import covariance, matrix_square_root


@contextlib.contextmanager
def _published_form():
    def dense(xc, scale, floor):
        return scale * covariance.gram(xc) + floor * jnp.eye(xc.shape[1], dtype=xc.dtype)

    saved = covariance.triangular_factor, matrix_square_root.bures_map_factored
    covariance.triangular_factor = dense
    matrix_square_root.bures_map_factored = matrix_square_root._bures_roots
    try:
        yield
    finally:
        covariance.triangular_factor, matrix_square_root.bures_map_factored = saved


def _kernel(solver):
    return jax.jit(functools.partial(score_lib.affinity, solver=solver))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--solver", default="host")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.n + args.d)
    mix = np.eye(args.d) + 0.5 * rng.normal(size=(args.d, args.d)) / np.sqrt(args.d)
    x = (rng.normal(size=(args.n, args.d)) @ mix).astype(np.float32)
    y = np.maximum(x, 0)
    x32, y32 = jnp.asarray(x), jnp.asarray(y)
    factored, published = _kernel(args.solver), _kernel(args.solver)
    scores = {"factored": float(factored(x32, y32).score)}
    with _published_form():
        scores["published"] = float(published(x32, y32).score)  # traced with the old form
    with jax.enable_x64(True):
        f64 = _kernel(args.solver)
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        scores["float64"] = float(f64(x64, y64).score)
    runs = {
        "factored": lambda: factored(x32, y32).score.block_until_ready(),
        "published": lambda: published(x32, y32).score.block_until_ready(),
    }
    times = {k: [] for k in [*runs, "float64"]}
    for _ in range(args.reps):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        with jax.enable_x64(True):
            t = time.perf_counter()
            f64(x64, y64).score.block_until_ready()
            times["float64"].append(time.perf_counter() - t)
    rows = {
        k: {
            "median_s": statistics.median(v),
            "min_s": min(v),
            "score": scores[k],
            "abs_diff_vs_float64": abs(scores[k] - scores["float64"]),
        }
        for k, v in times.items()
    }
    print(f"n={args.n} d={args.d} solver={args.solver} reps={args.reps}")
    for k, r in rows.items():
        print(
            f"{k:>10}: median {r['median_s']:.3f} s  min {r['min_s']:.3f} s  "
            f"|score - float64| {r['abs_diff_vs_float64']:.1e}"
        )
    if args.out:
        meta = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "cpus": os.cpu_count()}
        Path(args.out).write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
