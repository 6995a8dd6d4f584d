"""Load time of a fresh process, converting the weights (before) or reading them back (after).

For each model the parent saves a seeded state_dict (``tests/parity_helpers.seeded_model``,
as ``bench_signature.py`` does) and starts fresh processes that only load it, as
``affjax signature MODEL --weights FILE.pt`` does before its first batch:

* ``convert``: ``converters.torchvision.load``, the path before the cache (import torch
  and torchvision, build the torchvision model, load the state_dict, convert to Flax);
* ``miss``: ``converters.cache.load`` with an empty cache (the same, then the entry written);
* ``hit``: ``converters.cache.load`` with the entry there (sha256 of the file, read, no torch).

Each rep runs the three in that order, the miss on an emptied cache. Wall clock, from the
parent's launch of the child: ``import`` (interpreter, jax, affjax), ``load`` (the call,
until the variables are on the device) and ``total``. Medians over ``--reps``.

    python benchmarks/bench_weights_cache.py --model resnet18 densenet121 alexnet --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("convert", "miss", "hit")


def _child(mode: str, model: str, weights: str, cache_dir: str, result: str) -> None:
    t = {}
    import jax

    import affjax  # noqa: F401 - what any affjax process imports before loading a model

    t["import"] = time.time()
    if mode == "convert":
        from converters.torchvision import load

        loaded, cached = load(model, weights), False
    else:
        from converters.cache import load

        loaded = load(model, weights, cache_dir=cache_dir)
        cached = loaded.cached
    jax.block_until_ready(loaded.variables)
    t["load"] = time.time()
    out = {
        "times": t,
        "cached": cached,
        "torch_imported": "torch" in sys.modules,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    Path(result).write_text(json.dumps(out))


def _run(mode: str, model: str, weights: Path, cache_dir: Path, tmp: Path) -> dict:
    result = tmp / f"{mode}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, __file__, "--child", mode, model, str(weights), str(cache_dir)]
    launch = time.time()
    proc = subprocess.run([*cmd, str(result)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {model} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(result.read_text())
    t = out.pop("times")
    out["import_s"] = t["import"] - launch
    out["load_s"] = t["load"] - t["import"]
    out["total_s"] = t["load"] - launch
    return out


def _sha256_s(path: Path, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        h.hexdigest()
        times.append(time.perf_counter() - s)
    return statistics.median(times)


def bench_model(name: str, reps: int, seed: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from parity_helpers import seeded_model

    with tempfile.TemporaryDirectory(prefix="bench_weights_cache_") as tmpname:
        tmp = Path(tmpname)
        weights = tmp / f"{name}.pt"
        torch.save(seeded_model(name, seed).state_dict(), weights)
        cache_dir = tmp / "weights_cache"
        runs = {m: [] for m in MODES}
        for _ in range(reps):
            shutil.rmtree(cache_dir, ignore_errors=True)
            for mode in MODES:
                runs[mode].append(_run(mode, name, weights, cache_dir, tmp))
        entry_bytes = sum(p.stat().st_size for p in cache_dir.glob("*.msgpack"))
        row = {
            "model": name,
            "state_dict_bytes": weights.stat().st_size,
            "entry_bytes": entry_bytes,
            "sha256_s": _sha256_s(weights),
            "runs": runs,
        }
    for mode, rs in runs.items():
        want_cached = mode == "hit"
        if any(r["cached"] != want_cached for r in rs):
            raise RuntimeError(f"{name} {mode}: cached flags {[r['cached'] for r in rs]}")
        for key in ("import_s", "load_s", "total_s", "peak_rss_bytes"):
            row[f"{mode}_{key}"] = statistics.median(r[key] for r in rs)
        row[f"{mode}_torch_imported"] = any(r["torch_imported"] for r in rs)
    row["load_speedup"] = row["convert_load_s"] / row["hit_load_s"]
    return row


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | state_dict MB | sha256 s | load s: convert / miss / hit | total s: convert / "
        "hit | load convert / hit | torch in hit | peak RSS GiB: convert / hit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['state_dict_bytes'] / 1e6:.1f} | {r['sha256_s']:.3f} | "
            f"{r['convert_load_s']:.2f} / {r['miss_load_s']:.2f} / {r['hit_load_s']:.3f} | "
            f"{r['convert_total_s']:.2f} / {r['hit_total_s']:.2f} | {r['load_speedup']:.0f}× | "
            f"{'yes' if r['hit_torch_imported'] else 'no'} | "
            f"{r['convert_peak_rss_bytes'] / 2**30:.2f} / {r['hit_peak_rss_bytes'] / 2**30:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["resnet18"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/weights_cache.json"))
    args = p.parse_args(argv)
    versions = {k: metadata.version(k) for k in ("jax", "flax", "torch", "torchvision")}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **versions,
        "command": "python benchmarks/bench_weights_cache.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    rows = [bench_model(name, args.reps, args.seed) for name in args.model]
    print(_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
    else:
        main()
