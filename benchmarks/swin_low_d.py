"""Low-d assignment problems of a real signature: Swin-T's GELU calls, host vs auction vs scipy.

With the reference reduction, Swin's channels-last MLP activations ``[N, H, W, C]``
reduce to ``[n, H]``: d = 56, 28, 14, 7 at 224 px. For each call this scores the
captured features with the host solver and with the JAX auction (both through
:func:`affjax.affinity_score`), and solves the same Bures cost matrix with scipy
directly (the reference's A = 0 cost on degenerate calls); it also runs the
auction alone on that matrix to count its rounds.

    python benchmarks/swin_low_d.py --n 64 --size 224 --out benchmarks/results/swin_low_d.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
import torch
from bench_assignment import bures_cost
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from parity_helpers import nhwc_images, seeded_model  # noqa: E402

from affjax import affinity_score  # noqa: E402
from affjax.capture import capture  # noqa: E402
from affjax.solvers.auction import auction  # noqa: E402
from converters.torchvision import convert  # noqa: E402


def rows(name: str, n: int, size: int, seed: int):
    model = seeded_model(name)
    module, variables = convert(model, name)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with jax.default_matmul_precision("highest"):
        calls = capture(module, variables, nhwc_images(x), chunk_size=16)
    solve = jax.jit(auction)
    for c in calls:
        xs, ys = np.asarray(c.x, np.float64), np.asarray(c.y, np.float64)
        host = affinity_score(xs, ys, solver="host")
        auc = affinity_score(xs, ys, solver="auction")
        if host.degenerate:  # the reference maps every input to my (A = 0)
            yc = ys - ys.mean(0)
            cost = np.broadcast_to((yc * yc).sum(1)[None], (n, n)).copy()
        else:
            cost = bures_cost(xs, ys)
        optimum = cost[linear_sum_assignment(cost)].sum() / n
        with jax.enable_x64(True):
            alone = solve(cost)
        yield {
            "layer": c.key,
            "d": xs.shape[1],
            "trace_sy": float(host.normaliser) / 2,  # includes the 1e-6 d ridge
            "w2_scipy": float(optimum),
            "host_minus_scipy": float(host.w2) - optimum,
            "auction_minus_scipy": float(auc.w2) - optimum,
            "auction_gap": float(auc.gap),
            "auction_converged": bool(auc.converged),
            "auction_rounds": int(alone.iterations),
            "degenerate": bool(host.degenerate),  # tr(Sy) <= 2e-6 d: A = 0
            "score_host": float(host.score),
            "score_auction_minus_host": float(auc.score) - float(host.score),
        }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="swin_t")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = list(rows(args.model, args.n, args.size, args.seed))
    cols = list(table[0])
    print(" | ".join(cols))
    for r in table:
        print(" | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()))
    if args.out:
        meta = {"model": args.model, "n": args.n, "size": args.size, "seed": args.seed}
        meta["backend"] = jax.default_backend()
        Path(args.out).write_text(json.dumps({**meta, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
