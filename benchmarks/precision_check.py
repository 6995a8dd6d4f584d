"""Per-call numerics of a signature on an accelerator against the CPU in float64.

The reference is computed in a CPU-only subprocess (``JAX_PLATFORMS=cpu``,
float64, the exact host solver, forward at HIGHEST); on the default device the
same signature runs with ``forward_precision="highest"`` and ``"default"``
(the platform's own: TF32 convolutions on NVIDIA GPUs, one bfloat16 pass on
TPU), score dtype and solver as the device picks them. Printed side by side,
written as JSON.

    python benchmarks/precision_check.py --model resnet18 --n 256 --size 224 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("aff_score", "cka_score", "r2_score")


def _model(name: str, seed: int):
    try:
        from converters.torchvision import load

        loaded = load(name, "random", seed=seed)
        return loaded.module, loaded.variables, f"torchvision init, seed {seed}"
    except ImportError:  # torch-free machine: Flax's own init
        import jax

        from affjax.models import get_model

        module = get_model(name)
        variables = module.init(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32))
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        return module, variables, f"flax init, seed {seed}"


def _records(args, **kwargs) -> tuple[list[dict], float, str]:
    from affjax import signature

    module, variables, origin = _model(args.model, args.seed)
    images = np.random.default_rng(args.seed).normal(size=(args.n, args.size, args.size, 3))
    t = time.perf_counter()
    sig = signature(
        module,
        variables,
        images.astype(np.float32),
        metrics=METRICS,
        chunk_size=args.chunk_size,
        **kwargs,
    )
    return sig.records(), time.perf_counter() - t, origin


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/precision_check.json")
    p.add_argument("--cpu-reference", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.cpu_reference:
        records, seconds, origin = _records(args, dtype="float64", solver="host")
        out.write_text(json.dumps({"records": records, "seconds": seconds, "origin": origin}))
        return
    ref_path = out.with_suffix(".cpu64.json")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--cpu-reference"]
    subprocess.run([*cmd, "--out", str(ref_path)], check=True, env=env)
    ref = json.loads(ref_path.read_text())

    import jax

    runs = {"cpu64": ref["records"]}
    seconds = {"cpu64": ref["seconds"]}
    for fp in ("highest", "default"):
        runs[fp], seconds[fp], _ = _records(args, forward_precision=fp)
        runs[fp], seconds[fp], _ = _records(args, forward_precision=fp)  # warm time
    device = str(jax.devices()[0])
    print(f"{args.model} n={args.n} {args.size}px on {device} vs CPU float64 ({ref['origin']})")
    print(f"{'call':28s} {'cpu f64':>9s} {'highest':>9s} {'|d|':>8s} {'default':>9s} {'|d|':>8s}")
    worst = {fp: {m: [] for m in METRICS} for fp in ("highest", "default")}
    for i, r in enumerate(ref["records"]):
        h, d = runs["highest"][i], runs["default"][i]
        assert h["layer"] == r["layer"] == d["layer"]
        for fp, rec in (("highest", h), ("default", d)):
            for m in METRICS:
                worst[fp][m].append(abs(rec[m] - r[m]))
        name = f"{r['layer']}[{r['call']}]"
        print(
            f"{name[-28:]:28s} {r['aff_score']:9.6f} {h['aff_score']:9.6f} "
            f"{abs(h['aff_score'] - r['aff_score']):8.1e} {d['aff_score']:9.6f} "
            f"{abs(d['aff_score'] - r['aff_score']):8.1e}"
        )
    summary = {
        fp: {m: {"max": max(v), "median": float(np.median(v))} for m, v in per.items()}
        for fp, per in worst.items()
    }
    for fp, per in summary.items():
        cells = ", ".join(
            f"{m} max {v['max']:.1e} median {v['median']:.1e}" for m, v in per.items()
        )
        print(f"{fp:8s} ({seconds[fp]:.1f} s warm): {cells}")
    statuses = {fp: sorted({r["status"] for r in recs}) for fp, recs in runs.items()}
    print("statuses:", statuses)
    out.write_text(
        json.dumps(
            {
                "device": device,
                "args": vars(args),
                "seconds": seconds,
                "summary": summary,
                "statuses": statuses,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
