"""Exact assignment solvers on the host CPU, the candidates for ``solver="host"``.

Costs are squared distances between Bures-mapped inputs and outputs of a ReLU
(the matrices the score actually solves). POT runs as the reference calls it
(``numItermax=1e7``); ``lap`` and ``lapjv`` are timed when installed.

    python benchmarks/bench_assignment.py --n 1024 2048 --d 1 64 512
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import numpy as np
import ot
from scipy.optimize import linear_sum_assignment

from affjax.math import costs, covariance, matrix_square_root


def bures_cost(x, y):
    """The score's own cost: squared distances between Bures-mapped ``x`` and ``y``."""
    with jax.enable_x64(True):
        a = np.asarray(
            matrix_square_root.bures_map(covariance.empirical(x), covariance.empirical(y))
        )
    t = (x - x.mean(0)) @ a
    yc = y - y.mean(0)
    return costs.sq_euclidean(t, yc)


def _cost(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ (np.eye(d) + 0.5 * rng.normal(size=(d, d)) / np.sqrt(d))
    return bures_cost(x, np.maximum(x, 0))


def _solvers():
    out = {
        "scipy.linear_sum_assignment": lambda c: c[linear_sum_assignment(c)].sum(),
        "pot.emd2(numItermax=1e7)": lambda c: (
            len(c)
            * ot.emd2(
                np.full(len(c), 1 / len(c)), np.full(len(c), 1 / len(c)), c, numItermax=int(1e7)
            )
        ),
    }
    if importlib.util.find_spec("lap"):
        import lap

        out["lap.lapjv"] = lambda c: c[np.arange(len(c)), lap.lapjv(c, extend_cost=False)[1]].sum()
    if importlib.util.find_spec("lapjv"):
        import lapjv

        out["lapjv.lapjv"] = lambda c: c[np.arange(len(c)), lapjv.lapjv(c)[0]].sum()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--d", type=int, nargs="+", default=[1, 64, 512])
    p.add_argument("--out", default="benchmarks/results/assignment.json")
    args = p.parse_args(argv)
    rows = []
    for n in args.n:
        for d in args.d:
            c = np.ascontiguousarray(_cost(n, d, n + d))
            best = None
            for name, fn in _solvers().items():
                t = time.perf_counter()
                total = float(fn(c))
                dt = time.perf_counter() - t
                best = total if best is None else min(best, total)
                rows.append({"n": n, "d": d, "solver": name, "seconds": dt, "total": total})
            for r in rows[-len(_solvers()) :]:
                r["excess_over_best"] = r["total"] - best
                print(
                    f"n={n:5d} d={d:4d} {r['solver']:30s} {r['seconds']:8.3f} s  "
                    f"excess {r['excess_over_best']:.3g}",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
