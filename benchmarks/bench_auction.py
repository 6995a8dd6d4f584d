"""Rounds and time of the in-JAX auction, by epsilon-scaling factor.

The auction is the accelerator backend of the W2 step; its time is (rounds) x
(one fused [n, n] pass plus a few O(n) kernels), so the round count is the number
to cut, and it can be measured on any backend. Costs are the score's own: squared
distances between Bures-mapped inputs ``x ~ N(0, I)`` and outputs ``f(x)``. Every
solve is checked against scipy's optimum within its own certificate.

    python benchmarks/bench_auction.py --n 512 --d 2 4 8 64 --act relu relu+noise --scaling 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from bench_assignment import bures_cost
from scipy.optimize import linear_sum_assignment

from affjax.solvers import auction as auction_lib
from affjax.solvers.auction import auction

ACTIVATIONS = {
    "relu": lambda x, rng: np.maximum(x, 0),
    "tanh": lambda x, rng: np.tanh(x),
    "cube": lambda x, rng: x**3,
    # not a function of x alone, like a channel mean after a spatial non-linearity
    "relu+noise": lambda x, rng: np.maximum(x, 0) + 0.3 * rng.normal(size=x.shape),
}


def _cost(n, d, act, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return bures_cost(x, ACTIVATIONS[act](x, rng))


def bench(n, d, act, scaling, *, seeds):
    rows = []
    for seed in seeds:
        c = _cost(n, d, act, seed)
        optimum = c[linear_sum_assignment(c)].sum()
        with jax.enable_x64(True):
            solve = jax.jit(lambda m, s=scaling: auction(m, scaling=s)).lower(c).compile()
            t = time.perf_counter()
            r = jax.block_until_ready(solve(c))
            seconds = time.perf_counter() - t
        primal, gap = float(r.primal), float(r.gap)
        if not (bool(r.converged) and abs(primal - optimum) <= gap):
            raise AssertionError(f"n={n} d={d} seed={seed}: {primal} vs optimum {optimum}")
        rows.append((int(r.iterations), seconds, gap / optimum))
    rounds, seconds, rel_gap = (np.array(v) for v in zip(*rows, strict=True))
    return {
        "n": n,
        "d": d,
        "activation": act,
        "scaling": scaling,
        "rounds_median": float(np.median(rounds)),
        "rounds_max": int(rounds.max()),
        "seconds_median": float(np.median(seconds)),
        "us_per_round": float(np.median(seconds / rounds) * 1e6),
        "rel_gap_max": float(rel_gap.max()),
    }


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[512])
    p.add_argument("--d", type=int, nargs="+", default=[2, 4, 8, 64])
    p.add_argument("--act", nargs="+", default=["relu", "relu+noise"], choices=ACTIVATIONS)
    p.add_argument("--scaling", type=float, nargs="+", default=[5.0, 25.0])
    p.add_argument("--seeds", type=int, default=2, help="problems per cell")
    p.add_argument("--out", default="benchmarks/results/auction.json")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="override a module constant of affjax.solvers.auction, e.g. _AUGMENT=0",
    )
    args = p.parse_args(argv)
    for item in args.set:
        name, value = item.split("=")
        if not hasattr(auction_lib, name):
            raise SystemExit(f"affjax.solvers.auction has no constant {name}")
        # the constant's own type: int, float (e.g. _SWEEP_TOL=0.0009765625) or bool (0/1)
        kind = type(getattr(auction_lib, name))
        setattr(auction_lib, name, kind(float(value)))
    cols = ["n", "d", "activation", "scaling", "rounds_median", "rounds_max", "us_per_round"]
    cols += ["rel_gap_max"]
    print(" | ".join(cols))
    rows = []
    for n in args.n:
        for d in args.d:
            for act in args.act:
                for s in args.scaling:
                    row = bench(n, d, act, s, seeds=range(args.seeds))
                    rows.append(row)
                    print(" | ".join(_fmt(row[c]) for c in cols), flush=True)
    write_results(args.out, rows, set=args.set)


def write_results(path, rows: list, **meta) -> None:
    """``{"meta": {date, backend, device, jax, **meta}, "rows": rows}`` as JSON at ``path``."""
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        **meta,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
