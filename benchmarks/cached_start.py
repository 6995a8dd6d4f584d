"""Cached start: a fresh process's first signature call minus its warm call, cache warm.

Issue 12 item 3 asks a second process to reach its first record within 2 s of its
warm time (JAX's persistent compilation cache is on by default). JAX caches
executables, not traces: what a cached start still pays is Python tracing and
lowering. This script measures that gap and counts the traces behind it.

For every model (seeded torchvision weights, ``tests/parity_helpers.seeded_model``)
and batch (seeded N(0, 1) images), one child process fills an empty temporary
cache (``AFFJAX_CACHE_DIR``), then ``--reps`` fresh children each time their
first ``affjax.signature`` call and a second (warm) one. Per child: first, warm,
first − warm, and the jit traces of the first call by function name
(``jax.monitoring``'s trace-duration event: ``_forward`` is capture's forward,
``init`` is :func:`affjax.capture.call_order`'s ``eval_shape`` trace).

The children import affjax from ``PYTHONPATH``, so one script times two trees:

    PYTHONPATH=$PWD python benchmarks/cached_start.py --model resnet18 --batch 64 256
    PYTHONPATH=/tmp/before python benchmarks/cached_start.py --label before ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRIC_SETS = {"all": None, "scores": ("aff_score",)}


def _child(spec: dict) -> dict:
    import jax
    from jax._src import dispatch

    traces: dict[str, list] = {}
    events: dict[str, list] = {}  # every duration event: tracing, lowering, compile/cache load

    def listen(event, secs, **kwargs):
        entry = events.setdefault(event.rsplit("/", 1)[-1], [0, 0.0])
        entry[0] += 1
        entry[1] += float(secs)
        if event == dispatch.JAXPR_TRACE_EVENT:
            entry = traces.setdefault(str(kwargs.get("fun_name", "?")), [0, 0.0])
            entry[0] += 1
            entry[1] += float(secs)

    jax.monitoring.register_event_duration_secs_listener(listen)

    import torch
    import torchvision

    import affjax
    from converters.torchvision import convert

    model = torchvision.models.get_model(spec["model"], weights=None)
    model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True))
    module, variables = convert(model.eval(), spec["model"])
    images = np.load(spec["images"])
    metrics = METRIC_SETS[spec["metrics"]]
    kw = {} if metrics is None else {"metrics": metrics}

    def timed() -> float:
        start = time.perf_counter()
        affjax.signature(module, variables, images, **kw).records()
        return time.perf_counter() - start

    traces.clear()  # convert's own init trace is not the signature's
    events.clear()
    first = timed()
    # the first call's traces of at least 50 ms (the rest are small eager ops)
    first_traces = {k: [c, round(s, 3)] for k, (c, s) in traces.items() if s >= 0.05}
    first_events = {k: [c, round(s, 3)] for k, (c, s) in events.items()}
    warm = [timed() for _ in range(spec["warm"])]
    return {
        "first_s": first, "warm_s": warm, "traces_first": first_traces,
        "events_first": first_events,
    }  # fmt: skip


def _run_child(spec: dict, tmp: Path, tag: str, cache: Path) -> dict:
    path = tmp / f"{tag}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "AFFJAX_CACHE_DIR": str(cache)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=spec["timeout"])
    if proc.returncode:
        raise RuntimeError(f"child {tag} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", default=["resnet18"])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--metrics", choices=sorted(METRIC_SETS), default="all")
    p.add_argument("--reps", type=int, default=3, help="cached-start children")
    p.add_argument("--label", default="after", help="names this tree in the JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", help="JSON path (default benchmarks/results/cached_start_*.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(Path(args.child).read_text()))))
        return

    import jax
    import torch

    import affjax

    sys.path.insert(0, str(ROOT / "tests"))
    from parity_helpers import seeded_model

    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.model:
            weights = tmp / f"{name}.pt"
            torch.save(seeded_model(name, args.seed).state_dict(), weights)
            for batch in args.batch:
                rng = np.random.default_rng(args.seed)
                images = rng.standard_normal((batch, args.size, args.size, 3), np.float32)
                np.save(tmp / "x.npy", images)
                spec = {
                    "model": name, "weights": str(weights), "images": str(tmp / "x.npy"),
                    "metrics": args.metrics, "timeout": args.timeout, "warm": 0,
                }  # fmt: skip
                cache = tmp / f"cache_{name}_{batch}"
                fill = _run_child(spec, tmp, "fill", cache)  # empty cache: compiles, writes
                reps = [
                    _run_child({**spec, "warm": 1}, tmp, f"r{i}", cache) for i in range(args.reps)
                ]
                gaps = [r["first_s"] - r["warm_s"][0] for r in reps]
                row = {
                    "model": name,
                    "batch": batch,
                    "fill_first_s": fill["first_s"],
                    "first_s": [r["first_s"] for r in reps],
                    "warm_s": [r["warm_s"][0] for r in reps],
                    "gap_s": gaps,
                    "gap_median_s": statistics.median(gaps),
                    "traces_first": reps[0]["traces_first"],
                    "events_first": [r["events_first"] for r in reps],
                }
                rows.append(row)
                traces = ", ".join(
                    f"{k} {c}x {t:.2f} s" for k, (c, t) in row["traces_first"].items()
                )
                print(
                    f"{args.label:8s} {name:12s} {batch:4d}  first "
                    + " ".join(f"{t:6.2f}" for t in row["first_s"])
                    + "  warm " + " ".join(f"{t:6.2f}" for t in row["warm_s"])
                    + f"  gap median {row['gap_median_s']:5.2f} s  traces: {traces}",
                    flush=True,
                )  # fmt: skip
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"cached_start_{args.label}_{'_'.join(args.model)}.json"
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "label": args.label,
        "affjax_from": str(Path(affjax.__file__).resolve().parents[1]),
        "jax": jax.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "metrics": args.metrics,
        "reps": args.reps,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
