"""Scoring on the CPU with the host BLAS single-threaded (affjax's default) or not.

``affjax.signature.score_calls`` limits OpenBLAS (numpy's and scipy's, which
jaxlib's LAPACK uses) to one thread while it scores on the CPU
(``affjax.xla_options.scoring_threads``): its threads keep spinning after a
call and take the cores XLA's next operation needs. This script scores the same
calls both ways in one process, alternated rep by rep (``AFFJAX_CPU_OPTIONS=off``
turns the limit off), and reports ms per call and the largest |Δ score| between
the two (the same float64 arithmetic; LAPACK's thread count may move the last
bits).

The calls: ``--calls`` per width of ReLU activations, ``x = z W`` with a random
mixing ``W`` (``z`` standard normal), n = ``--batch`` samples, all metrics.

    python benchmarks/bench_blas_threads.py --batch 256 --widths 128 512 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_auction import write_results  # noqa: E402

from affjax.capture import Call  # noqa: E402
from affjax.signature import METRICS, score_calls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"one BLAS thread (default)": None, "BLAS default threads": "off"}


def _calls(n: int, d: int, k: int, seed: int) -> list[Call]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        x = (rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d))).astype(
            np.float32
        )
        out.append(
            Call(
                f"c{i}_ReLU",
                0,
                "ReLU",
                False,
                (f"c{i}",),
                x,
                np.maximum(x, 0),
                None,
                None,
                0.0,
                0.0,
            )
        )
    return out


def _score(calls, setting):
    if setting is None:
        os.environ.pop("AFFJAX_CPU_OPTIONS", None)
    else:
        os.environ["AFFJAX_CPU_OPTIONS"] = setting
    s = time.perf_counter()
    recs = score_calls(calls, metrics=METRICS)
    return time.perf_counter() - s, np.array([r["aff_score"] for r in recs])


def bench(n: int, d: int, k: int, reps: int, seed: int) -> dict:
    calls = _calls(n, d, k, seed)
    times = {name: [] for name in SETTINGS}
    scores = {}
    for name, setting in SETTINGS.items():  # compile and warm both
        _, scores[name] = _score(calls, setting)
    for _ in range(reps):
        for name, setting in SETTINGS.items():
            t, _ = _score(calls, setting)
            times[name].append(1000 * t / k)
    one, default = (statistics.median(times[name]) for name in SETTINGS)
    a, b = scores.values()
    return {
        "n": n,
        "d": d,
        "calls": k,
        "ms_per_call": {name: statistics.median(v) for name, v in times.items()},
        "ms_per_call_all": times,
        "speedup": default / one,
        "max_abs_delta_score": float(np.max(np.abs(a - b))),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--calls", type=int, default=8, help="calls per width")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/blas_threads_cpu.json"))
    args = p.parse_args(argv)
    rows = [bench(args.batch, d, args.calls, args.reps, args.seed) for d in args.widths]
    names = list(SETTINGS)
    print(f"| n | d | {names[0]} ms/call | {names[1]} ms/call | speedup | max abs Δ score |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ms = r["ms_per_call"]
        print(
            f"| {r['n']} | {r['d']} | {ms[names[0]]:.1f} | {ms[names[1]]:.1f} | "
            f"{r['speedup']:.2f} | {r['max_abs_delta_score']:.1e} |"
        )
    command = "python benchmarks/bench_blas_threads.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    write_results(args.out, rows, command=command)


if __name__ == "__main__":
    main()
