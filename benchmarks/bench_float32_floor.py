"""The float32 floor of the auction: the smallest rtol it can certify.

In float32 (the TPU path, no x64) the auction's certificate cannot go below a
floor: eps stops at 64 ulps of the cost scale, and the gap carries a bound on
the rounding of its own sums (about ``(log2 n + 2) * eps32`` of the sums'
magnitude). This runs the score's auction path in float32 at decreasing rtol
on the score's own problems (``x ~ N(0, I)``, ``y = f(x)``) and reports the
certified ``gap / w2`` it reached, whether that met rtol (the call's status is
``uncertified`` otherwise), and how far the float32 W2 is from the float64
host optimum.

    python benchmarks/bench_float32_floor.py --n 2048 --d 16 64 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_auction import ACTIVATIONS

from affjax import affinity_score


def bench(n, d, act, rtols, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = ACTIVATIONS[act](x, rng)
    exact = affinity_score(x, y, solver="host", dtype="float64")
    row = {"n": n, "d": d, "activation": act, "w2_f64": float(exact.w2), "rtol": {}}
    for rtol in rtols:
        t = time.perf_counter()
        r = affinity_score(x, y, solver="auction", dtype="float32", rtol=rtol)
        seconds = time.perf_counter() - t
        row["rtol"][str(rtol)] = {
            "gap_over_w2": float(r.gap) / float(r.w2),
            "certified": bool(r.certified),
            "converged": bool(r.converged),
            "w2_rel_err": abs(float(r.w2) - float(exact.w2)) / float(exact.w2),
            "score_abs_err": abs(float(r.score) - float(exact.score)),
            "seconds": seconds,
        }
    row["floor"] = min(v["gap_over_w2"] for v in row["rtol"].values())
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[2048])
    p.add_argument("--d", type=int, nargs="+", default=[16, 64, 512])
    p.add_argument("--act", nargs="+", default=["relu", "tanh", "relu+noise"], choices=ACTIVATIONS)
    p.add_argument("--rtol", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6, 1e-8])
    p.add_argument("--out", default="benchmarks/results/float32_floor.json")
    args = p.parse_args(argv)
    rows = []
    head = " ".join(f"{'gap/w2 @' + str(r):>16s}" for r in args.rtol)
    print(f"{'n':>5s} {'d':>4s} {'f':>10s} {head} {'floor':>8s} {'|dW2|/W2':>9s}")
    for n in args.n:
        for d in args.d:
            for act in args.act:
                row = bench(n, d, act, args.rtol)
                rows.append(row)
                cells = " ".join(
                    f"{v['gap_over_w2']:>14.2e}{'  ' if v['certified'] else ' *'}"
                    for v in row["rtol"].values()
                )
                err = max(v["w2_rel_err"] for v in row["rtol"].values())
                print(f"{n:5d} {d:4d} {act:>10s} {cells} {row['floor']:8.2e} {err:9.1e}")
    print("* = uncertified (gap > rtol * w2)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
