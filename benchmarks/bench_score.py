"""Per-score time of affjax vs the PyTorch reference, side by side in one process.

For each (n, d): the published reference (``converters.reference.rho_aff``,
float32 as published: torch eigh square roots, ``ot.emd2`` with
``numItermax=1e7``), affjax on one problem, and affjax ``vmap``-ed over a
stack of problems (time per score). Compile time is reported apart;
``block_until_ready`` closes every timing. Inputs: ``x ~ N(0, 1)`` mixed by a
random matrix, ``y = relu(x)``.

    python benchmarks/bench_score.py                       # full grid
    python benchmarks/bench_score.py --n 256 1024 --d 64   # a subset
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
import torch

from affjax import affinity_score
from affjax.solvers import assignment
from converters.reference import rho_aff


def _problem(n, d, seed):
    rng = np.random.default_rng(seed)
    mix = np.eye(d) + 0.5 * rng.normal(size=(d, d)) / np.sqrt(d)
    x = (rng.normal(size=(n, d)) @ mix).astype(np.float32)
    return x, np.maximum(x, 0)


def _time(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _time_pair(fa, fb, reps):
    ta, tb = [], []
    for _ in range(reps):
        ta.append(_time(fa, 1))
        tb.append(_time(fb, 1))
    return statistics.median(ta), statistics.median(tb)


def bench(n, d, *, batch, reps, solver, dtype, reference=True):
    x, y = _problem(n, d, seed=n + d)
    row = {
        "n": n,
        "d": d,
        "batch": batch,
        "solver": assignment.resolve_solver(solver),
        "dtype": dtype,
    }
    if reference:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        ref = rho_aff(xt, yt)
        row["reference_score"] = float(ref)
        row["reference64_score"] = float(rho_aff(x, y, dtype=torch.float64))

    def one():
        return affinity_score(x, y, solver=solver, dtype=dtype).score.block_until_ready()

    t = time.perf_counter()
    score = float(one())
    row["compile_s"] = time.perf_counter() - t
    if reference:
        # Alternate the two so that both see the same machine load: on a shared
        # machine, timing one after the other moves the ratio by +-30 %.
        row["reference_s"], row["affjax_s"] = _time_pair(lambda: rho_aff(xt, yt), one, reps)
    else:
        row["affjax_s"] = _time(one, reps)
    row["affjax_score"] = score
    if batch > 1:
        xs = np.stack([_problem(n, d, seed=n + d + i)[0] for i in range(batch)])
        ys = np.maximum(xs, 0)

        def many():
            r = affinity_score(xs, ys, solver=solver, dtype=dtype)
            return r.score.block_until_ready()

        t = time.perf_counter()
        many()
        row["compile_batch_s"] = time.perf_counter() - t
        row["affjax_batch_per_score_s"] = _time(many, max(1, reps // 2)) / batch
    if reference:
        row["ratio_single"] = row["reference_s"] / row["affjax_s"]
        if batch > 1:
            row["ratio_batched"] = row["reference_s"] / row["affjax_batch_per_score_s"]
        row["abs_diff_vs_reference32"] = abs(score - row["reference_score"])
        row["abs_diff_vs_reference64"] = abs(score - row["reference64_score"])
    return row


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.3f}"
    return str(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--d", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--batch", type=int, default=16, help="problems per vmapped call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--solver", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--out", default="benchmarks/results/score.json")
    args = p.parse_args(argv)
    rows = []
    cols = [
        "n",
        "d",
        "solver",
        "reference_s",
        "affjax_s",
        "affjax_batch_per_score_s",
        "compile_s",
        "ratio_single",
        "ratio_batched",
        "abs_diff_vs_reference32",
        "abs_diff_vs_reference64",
    ]
    print(" | ".join(cols))
    for n in args.n:
        for d in args.d:
            row = bench(
                n,
                d,
                batch=args.batch,
                reps=args.reps,
                solver=args.solver,
                dtype=args.dtype,
                reference=not args.no_reference,
            )
            rows.append(row)
            print(" | ".join(_fmt(row.get(c, "-")) for c in cols), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
