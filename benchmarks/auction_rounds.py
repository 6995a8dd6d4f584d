"""Auction rounds on the W2 problems of real signatures, checked against scipy.

For seeded torchvision models (random weights, seeded normal images at 224 px),
captures every activation call, builds each call's cost exactly as the score
does (float64: centring, unbiased or Ledoit-Wolf covariances, the Bures map,
``costs.sq_euclidean`` of the mapped inputs and the outputs), solves it with the
JAX auction and counts its rounds. Every solve must be converged and certified:
``|primal - scipy optimum| <= gap``. Rounds are machine-independent (a GPU pays
tens of microseconds a round), so they are the number reported. The tie-heavy
synthetic cases of ``bench_auction.py`` (ReLU outputs at d = 2, 4, 8) are
reported alongside.

    python benchmarks/auction_rounds.py --models resnet18 alexnet densenet121 --batch 256 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from affjax.math import costs  # noqa: E402
from affjax.score import mapped_points  # noqa: E402
from affjax.solvers.auction import auction  # noqa: E402


def score_cost(x: np.ndarray, y: np.ndarray, *, shrinkage: bool) -> np.ndarray:
    """The ``[n, n]`` cost the score hands the auction (its float64 path)."""
    with jax.enable_x64(True):
        x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        points = mapped_points(x, y, shrinkage=shrinkage)
        return np.asarray(costs.sq_euclidean(points.t, points.y))


_solve = jax.jit(auction)


def solve_checked(cost: np.ndarray) -> dict:
    """Auction rounds and certificate, checked against scipy's optimum."""
    rows, cols = linear_sum_assignment(cost)
    optimum = float(cost[rows, cols].sum())
    with jax.enable_x64(True):
        r = jax.block_until_ready(_solve(cost))
    primal, gap = float(r.primal), float(r.gap)
    ok = bool(r.converged) and abs(primal - optimum) <= gap
    if not ok:
        raise AssertionError(f"not certified: primal {primal}, optimum {optimum}, gap {gap}")
    return {"rounds": int(r.iterations), "rel_gap": gap / max(abs(optimum), 1e-300)}


def model_calls(name: str, batch: int, chunk: int):
    import torch
    from parity_helpers import nhwc_images, seeded_model

    from affjax.capture import capture
    from converters.torchvision import convert

    module, variables = convert(seeded_model(name), name)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    return capture(module, variables, nhwc_images(images), chunk_size=chunk)


def summarize(rounds) -> dict:
    rounds = np.asarray(rounds)
    return {
        "solves": int(rounds.size),
        "rounds_median": float(np.median(rounds)),
        "rounds_p90": float(np.percentile(rounds, 90)),
        "rounds_max": int(rounds.max()),
    }


def run_model(name: str, batch: int, chunk: int) -> dict:
    t = time.perf_counter()
    calls = model_calls(name, batch, chunk)
    t_fwd = time.perf_counter() - t
    per_call, rounds = [], []
    for c in calls:
        if c.x.shape[1] < 2:  # d = 1: the score sorts, no assignment
            continue
        for shrinkage in (False, True):
            r = solve_checked(score_cost(c.x, c.y, shrinkage=shrinkage))
            rounds.append(r["rounds"])
            per_call.append(
                {"key": f"{c.key}#{c.call}", "d": int(c.x.shape[1]), "shrinkage": shrinkage, **r}
            )
    worst = max(per_call, key=lambda r: r["rounds"])
    return {
        "model": name,
        "batch": batch,
        **summarize(rounds),
        "worst_call": worst["key"],
        "worst_d": worst["d"],
        "rel_gap_max": max(r["rel_gap"] for r in per_call),
        "forward_s": t_fwd,
        "seconds": time.perf_counter() - t,
        "calls": per_call,
    }


def run_synthetic(n: int, d: int, act: str, seeds: int) -> dict:
    from bench_auction import _cost

    rs = [solve_checked(_cost(n, d, act, s)) for s in range(seeds)]
    return {
        "model": f"synthetic {act} d={d}",
        "batch": n,
        **summarize([r["rounds"] for r in rs]),
        "rel_gap_max": max(r["rel_gap"] for r in rs),
    }


COLS = ["model", "batch", "solves", "rounds_median", "rounds_p90", "rounds_max", "rel_gap_max"]


def _print(row):
    print(
        " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in COLS),
        flush=True,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["resnet18", "alexnet", "densenet121"])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--synthetic-d", type=int, nargs="*", default=[2, 4, 8])
    p.add_argument("--synthetic-n", type=int, nargs="*", default=[512, 2048])
    p.add_argument("--seeds", type=int, default=3, help="synthetic problems per cell")
    p.add_argument("--out", default="benchmarks/results/auction_rounds.json")
    args = p.parse_args(argv)
    print(" | ".join(COLS))
    rows = []
    for n in args.synthetic_n:
        for d in args.synthetic_d:
            for act in ("relu", "relu+noise"):
                rows.append(run_synthetic(n, d, act, args.seeds))
                _print(rows[-1])
    for batch in args.batch:
        for name in args.models:
            rows.append(run_model(name, batch, args.chunk))
            _print(rows[-1])
    from bench_auction import write_results

    write_results(args.out, rows, argv=sys.argv[1:])


if __name__ == "__main__":
    main()
