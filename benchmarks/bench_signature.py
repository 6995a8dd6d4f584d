"""Whole signatures: affjax against the PyTorch reference, each in a fresh process.

For every model, the parent builds one seeded torchvision model (saved as a
state_dict) and one batch of seeded N(0, 1) images (saved as NCHW and NHWC
``.npy``) in a temporary directory, then starts one child process per measured
thing, so that import, conversion and compilation are paid as a user pays them:

* ``reference``: the published pipeline (``converters.reference.reference_signature``,
  float32 as published unless ``--reference-dtype float64``), then torch's own
  forward pass on the same batch (warm, median of ``--reps``).
* ``affjax`` with an empty persistent compilation cache (first compile, which
  also fills the cache), then its warm signature and its own jitted forward pass
  (``module.apply`` at HIGHEST, same chunking), alternated rep by rep.
* ``affjax`` again with the now warm cache (cached start), first and one warm call.

Times are wall clock. ``cold`` runs from the parent's launch of the child to the
child holding the records, split into ``import`` (interpreter start and imports),
``load`` (the reference: state_dict read; affjax: ``converters.cache.load`` of the
state_dict file as the CLI does it, with the converted-weights cache in the run's
folder: empty in the first child, which imports torch, converts and stores; warm
in the cached start, which reads the Flax variables and never imports torch) and
``first`` (the first signature call; ``of it, scores``: from the end of its forward
pass, as its ``progress`` callback reports it, to the records). ``warm`` is the median of
the later calls in the same child. ``compile`` is first minus warm; the child also
counts XLA compilations through ``jax.monitoring`` (the backend-compile duration
event, per function name), so "one forward and one score kernel per width bucket"
can be checked. Peak memory: ``ru_maxrss`` of each child, and on a GPU the
device's ``peak_bytes_in_use`` (torch: ``max_memory_allocated``).

The reference has no compile step, so its warm time is its first signature call
(``--reference-warm`` times a second one). Ratios are reference / affjax.

    python benchmarks/bench_signature.py --model resnet18 --batch 256
    python benchmarks/bench_signature.py --model resnet50 --batch 2048 --chunk-size 256 \\
        --skip-reference
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# "all": affjax.signature.METRICS (imported in bench_model: the parent stays light until then).
METRIC_SETS = {"all": None, "scores": ("aff_score",)}
# XLA compiles at least this long are named in the output (the rest are tiny eager ops).
_NAMED_COMPILE_S = 0.2


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------


def _child_reference(spec: dict) -> dict:
    t = {}
    import torch
    import torchvision

    from converters.reference import reference_signature

    t["import"] = time.time()
    dev = "cuda" if spec["device"] == "gpu" else "cpu"
    model = torchvision.models.get_model(spec["model"], weights=None)
    model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True))
    model = model.eval().to(dev)
    t["load"] = time.time()
    x = torch.from_numpy(np.load(spec["images_nchw"])).to(dev)
    dtype = getattr(torch, spec["reference_dtype"])

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def run():
        out = reference_signature(model, x, metrics=spec["metrics"], dtype=dtype)
        sync()
        return out

    ref = run()
    t["first"] = time.time()
    out = {"times": t}
    if spec["reference_warm"]:
        s = time.perf_counter()
        run()
        out["warm_s"] = time.perf_counter() - s

    def forward():
        with torch.no_grad():
            model(x)
        sync()

    if spec["reps"]:
        forward()  # allocator / cuDNN warm-up
        fw = []
        for _ in range(spec["reps"]):
            s = time.perf_counter()
            forward()
            fw.append(time.perf_counter() - s)
        out["forward_s"] = statistics.median(fw)
    out["records"] = [
        {"layer": key, "call": i, **{m: float(v[m][i]) for m in spec["metrics"]}}
        for key, v in ref.items()
        for i in range(len(v[spec["metrics"][0]]))
    ]
    out["peak_rss_bytes"] = _peak_rss_bytes()
    if dev == "cuda":
        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


class _Compiles:
    """XLA compilations seen through ``jax.monitoring`` (one event per backend compile,
    persistent-cache loads included), and the persistent cache's lookups, hits and writes."""

    def __init__(self):
        import jax
        from jax._src import dispatch  # the event's name; the listener API is public

        self.event = getattr(
            dispatch, "BACKEND_COMPILE_EVENT", "/jax/core/compile/backend_compile_duration"
        )
        self.log: list[tuple[str, float]] = []
        self.events: dict[str, list] = {}  # every duration event: tracing, lowering, ...
        self.cache = {"requests": 0, "hits": 0, "writes": 0}
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event, secs, **kwargs):
        entry = self.events.setdefault(event, [0, 0.0])
        entry[0] += 1
        entry[1] += float(secs)
        if event == self.event:
            self.log.append((str(kwargs.get("fun_name", "?")), float(secs)))

    def _event(self, event, **kwargs):
        # jax counts a compile that looked in the cache, a hit, and (as "misses") an entry
        # written: compiles under min_compile_s are looked up but never written.
        name = {
            "/jax/compilation_cache/compile_requests_use_cache": "requests",
            "/jax/compilation_cache/cache_hits": "hits",
            "/jax/compilation_cache/cache_misses": "writes",
        }.get(event)
        if name:
            self.cache[name] += 1

    def summary(self, start: int = 0, stop: int | None = None) -> dict:
        log = self.log[start:stop]
        named: dict[str, list] = {}
        for name, secs in log:
            entry = named.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += secs
        return {
            "count": len(log),
            "seconds": sum(s for _, s in log),
            "by_name": {  # the expensive ones: forward and score kernels
                k: {"count": c, "seconds": round(s, 3)}
                for k, (c, s) in sorted(named.items(), key=lambda kv: -kv[1][1])
                if s >= _NAMED_COMPILE_S
            },
        }


def _child_affjax(spec: dict) -> dict:
    t = {}
    import jax
    import jax.numpy as jnp

    import affjax
    from affjax import compilation_cache, precision

    t["import"] = time.time()
    compiles = _Compiles()
    if spec["cache_dir"]:
        minimum = spec["cache_min_compile_s"]
        if minimum is None:
            compilation_cache.enable(spec["cache_dir"])  # the library's default, as users get it
        else:
            compilation_cache.enable(spec["cache_dir"], minimum)
    # As a user loads it (`affjax signature MODEL --weights FILE.pt`): through the converted-
    # weights cache, empty in the first child (convert and store), warm in the cached start.
    from converters import cache as weights_cache

    loaded = weights_cache.load(spec["model"], spec["weights"], cache_dir=spec["weights_cache_dir"])
    module, variables = loaded.module, loaded.variables
    t["load"] = time.time()
    images = np.load(spec["images_nhwc"])
    n = images.shape[0]
    chunk = spec["chunk_size"]

    def sig(progress=None):
        return affjax.signature(
            module, variables, images, metrics=spec["metrics"], chunk_size=chunk,
            progress=progress,
        ).records()  # fmt: skip

    chunks_done = []  # the forward's end: its last chunk's records are on the host
    records = sig(progress=lambda done, total: chunks_done.append(time.time()))
    t["first"] = time.time()
    t["first_forward"] = chunks_done[-1]
    out = {"times": t, "compiles_first": compiles.summary()}
    out["weights_cache_hit"] = loaded.cached
    out["torch_imported"] = "torch" in sys.modules

    # The same forward pass alone: logits of the same chunks, at the signature's precision,
    # compiled with the same XLA options as affjax's own functions (affjax.xla_options).
    jit = getattr(sys.modules.get("affjax.xla_options"), "jit", jax.jit)

    @jit
    def apply(v, x):
        with precision.matmul_scope("highest"):
            return module.apply(v, x)

    dev_vars = jax.device_put(variables)
    step = min(chunk or n, n)

    def forward():
        outs = []
        for s in range(0, n, step):
            c = images[s : s + step]
            if c.shape[0] < step:  # one compiled shape, as capture pads
                c = np.concatenate([c, images[: step - c.shape[0]]])
            outs.append(apply(dev_vars, jnp.asarray(c)))
        jax.block_until_ready(outs)

    if spec["forward"]:
        s = time.perf_counter()
        forward()
        out["forward_first_s"] = time.perf_counter() - s
    mark = len(compiles.log)  # from here on, a compile is a retrace of a warm call
    sw, fw = [], []
    for _ in range(spec["reps"]):  # alternated: both see the same machine load
        s = time.perf_counter()
        sig()
        sw.append(time.perf_counter() - s)
        if spec["forward"]:
            s = time.perf_counter()
            forward()
            fw.append(time.perf_counter() - s)
    if sw:
        out["warm_s"] = statistics.median(sw)
        out["warm_all_s"] = sw
    if fw:
        out["forward_s"] = statistics.median(fw)
    out["compiles_later"] = compiles.summary(mark)
    out["persistent_cache"] = compiles.cache
    out["jax_duration_events"] = {
        k: {"count": c, "seconds": round(v, 3)} for k, (c, v) in compiles.events.items()
    }
    keep = ("layer", "call", "n", "d", "status", *spec["metrics"])
    out["records"] = [{k: r[k] for k in keep if k in r} for r in records]
    widths = sorted({r["d"] for r in records})
    out["widths"] = widths
    # The signature's width buckets (a private helper: absent, the check is by widths only).
    bucket = getattr(sys.modules.get("affjax.signature"), "_bucket", None)
    if bucket is not None:
        out["width_buckets"] = sorted({bucket(d) for d in widths})
    out["peak_rss_bytes"] = _peak_rss_bytes()
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    out["backend"] = jax.default_backend()
    out["device_kind"] = jax.devices()[0].device_kind
    out["jax"] = jax.__version__
    return out


def _child_main(role: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = _child_reference(spec) if role == "reference" else _child_affjax(spec)
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def _prepare(name: str, batch: int, size: int, seed: int, tmp: Path) -> dict:
    """Seeded weights and images, once, for both sides."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from parity_helpers import seeded_model

    weights = tmp / f"{name}.pt"
    torch.save(seeded_model(name, seed).state_dict(), weights)
    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)
    np.save(tmp / "images_nchw.npy", x)
    np.save(tmp / "images_nhwc.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    return {
        "model": name,
        "weights": str(weights),
        "images_nchw": str(tmp / "images_nchw.npy"),
        "images_nhwc": str(tmp / "images_nhwc.npy"),
    }


def _run_child(role: str, spec: dict, tmp: Path, tag: str, device: str, timeout: float) -> dict:
    spec = {**spec, "result": str(tmp / f"{tag}.json")}
    path = tmp / f"{tag}.spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the reference too stays on the CPU
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, str(path)]
    launch = time.time()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:] or f"exit {proc.returncode}"}
    out = json.loads(Path(spec["result"]).read_text())
    t = out.pop("times")
    out["import_s"] = t["import"] - launch
    out["load_s"] = t["load"] - t["import"]
    out["first_s"] = t["first"] - t["load"]
    out["cold_s"] = t["first"] - launch
    if "first_forward" in t:  # affjax: the first call's forward, then its scores
        out["first_forward_s"] = t["first_forward"] - t["load"]
        out["first_scores_s"] = t["first"] - t["first_forward"]
    if "warm_s" in out:
        out["compile_s"] = out["first_s"] - out["warm_s"]
    return out


def _deltas(ref: list[dict], aff: list[dict], metrics) -> dict:
    """Largest per-call |affjax - reference| per metric over the calls both have
    (NaN on affjax's side, an ill-posed metric, is skipped)."""
    got = {(r["layer"], r["call"]): r for r in aff}
    want = {(r["layer"], r["call"]): r for r in ref}
    common = sorted(set(got) & set(want))
    out = {"calls_matched": len(common), "calls_reference": len(want), "calls_affjax": len(got)}
    worst = {}
    for m in metrics:
        diffs = [
            (abs(got[k][m] - want[k][m]), k)
            for k in common
            if m in got[k] and np.isfinite(got[k][m]) and np.isfinite(want[k][m])
        ]
        if diffs:
            d, k = max(diffs)
            worst[m] = {"max_abs": d, "at": f"{k[0]}[{k[1]}]"}
    out["max_abs_delta"] = worst
    return out


def bench_model(name: str, args, save=None) -> dict:
    """One model's row; ``save(partial_row)`` after each child, so a killed run keeps them."""
    from affjax.signature import METRICS

    metrics = METRIC_SETS[args.metrics] or METRICS
    row = {
        "model": name,
        "batch": args.batch,
        "size": args.size,
        "metrics": args.metrics,
        "chunk_size": args.chunk_size,
        "device": args.device,
        "reps": args.reps,
        "reference_dtype": args.reference_dtype,
    }
    with tempfile.TemporaryDirectory(prefix="bench_signature_") as tmpname:
        tmp = Path(tmpname)
        base = _prepare(name, args.batch, args.size, args.seed, tmp)
        base.update(
            metrics=list(metrics),
            chunk_size=args.chunk_size,
            device=args.device,
            reps=args.reps,
            cache_min_compile_s=args.cache_min_compile_s,
        )
        cache = tmp / "jax_cache"
        base["weights_cache_dir"] = str(tmp / "weights_cache")  # empty, then warm: as `cache`
        runs = {}

        def done():
            if save is not None:
                lean = {k: {f: v for f, v in r.items() if f != "records"} for k, r in runs.items()}
                save({**row, "runs": lean, "partial": True})

        runs["affjax_cold"] = _run_child(
            "affjax", {**base, "cache_dir": str(cache), "forward": not args.no_forward}, tmp, "a1",
            args.device, args.timeout,
        )  # fmt: skip
        done()
        if not args.no_cached_run:
            runs["affjax_cached"] = _run_child(
                "affjax", {**base, "cache_dir": str(cache), "forward": False, "reps": 1}, tmp,
                "a2", args.device, args.timeout,
            )  # fmt: skip
            done()
        if not args.skip_reference:
            runs["reference"] = _run_child(
                "reference",
                {
                    **base,
                    "reference_dtype": args.reference_dtype,
                    "reference_warm": args.reference_warm,
                },
                tmp,
                "ref",
                args.device,
                args.timeout,
            )
    aff, ref = runs["affjax_cold"], runs.get("reference")
    ok = "error" not in aff
    if ok and ref is not None and "error" not in ref:
        row["delta"] = _deltas(ref["records"], aff["records"], metrics)
        row["ratio_cold"] = ref["cold_s"] / aff["cold_s"]
        cached = runs.get("affjax_cached", {})
        if "cold_s" in cached:
            row["ratio_cold_cached"] = ref["cold_s"] / cached["cold_s"]
        ref_warm = ref.get("warm_s", ref["first_s"])
        if "warm_s" in aff:
            row["ratio_warm"] = ref_warm / aff["warm_s"]
    if ok and "warm_s" in aff and "forward_s" in aff:
        row["signature_over_forward"] = aff["warm_s"] / aff["forward_s"]
    if ok:
        row["num_calls"] = len(aff["records"])
        for k in ("widths", "width_buckets", "backend", "device_kind", "jax"):
            if k in aff:
                row[k] = aff.pop(k)
    for run in runs.values():
        run.pop("records", None)
    row["runs"] = runs
    return row


_COLS = [
    ("run", None),
    ("cold s", "cold_s"),
    ("import", "import_s"),
    ("load", "load_s"),
    ("first", "first_s"),
    ("of it, scores", "first_scores_s"),
    ("warm s", "warm_s"),
    ("compile s", "compile_s"),
    ("forward s", "forward_s"),
    ("XLA compiles", None),
    ("peak RSS GiB", "peak_rss_bytes"),
    ("device peak GiB", "device_peak_bytes"),
]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.1 or abs(v) >= 1e3 else f"{v:.2f}"
    return str(v)


def _table(row: dict) -> str:
    lines = [
        f"## {row['model']}, batch {row['batch']}, {row['size']} px, metrics {row['metrics']}, "
        f"chunk {row['chunk_size']}, {row['device']}",
        "| " + " | ".join(c for c, _ in _COLS) + " |",
        "|" + "---|" * len(_COLS),
    ]
    for tag, run in row["runs"].items():
        if "error" in run:
            lines.append(f"| {tag} | error: {run['error'].strip().splitlines()[-1][:150]} |")
            continue
        cells = [tag]
        for _, key in _COLS[1:]:
            if key is None:
                c = run.get("compiles_first")
                cells.append(
                    "-" if c is None else f"{c['count']} (+{run['compiles_later']['count']})"
                )
            elif key.endswith("bytes"):
                cells.append(_fmt(run[key] / 2**30) if key in run else "-")
            else:
                cells.append(_fmt(run.get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    summary = []
    for k in ("ratio_cold", "ratio_cold_cached", "ratio_warm", "signature_over_forward"):
        if k in row:
            summary.append(f"{k} {row[k]:.2f}")
    if "delta" in row:
        worst = row["delta"]["max_abs_delta"]
        if "aff_score" in worst:
            summary.append(f"max |d aff_score| {worst['aff_score']['max_abs']:.2g}")
        summary.append(
            f"calls {row['delta']['calls_matched']}/{row['delta']['calls_reference']} matched"
        )
    lines.append("; ".join(summary))
    named = row["runs"]["affjax_cold"].get("compiles_first", {}).get("by_name")
    if named:
        lines.append(
            "compiles >= 0.2 s in the first call: "
            + ", ".join(f"{k} x{v['count']} ({v['seconds']:.1f} s)" for k, v in named.items())
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["resnet18"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224, help="image side in px")
    p.add_argument("--metrics", choices=sorted(METRIC_SETS), default="all")
    p.add_argument("--chunk-size", type=int, default=None, help="affjax forward chunk")
    p.add_argument("--reps", type=int, default=2, help="warm calls (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--reference-dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--reference-warm", action="store_true", help="time a second reference call")
    p.add_argument("--no-forward", action="store_true", help="skip affjax's forward-only timing")
    p.add_argument("--no-cached-run", action="store_true", help="skip the warm-cache child")
    p.add_argument(
        "--cache-min-compile-s",
        type=float,
        default=None,
        help="shorter compiles are not cached (default: affjax.compilation_cache.enable's, 0 s)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="per child, seconds")
    p.add_argument("--out", help="JSON path (default benchmarks/results/signature_*.json)")
    return p


def main(argv=None) -> list[dict]:
    args = _parser().parse_args(argv)
    out = Path(
        args.out
        or ROOT
        / "benchmarks/results"
        / f"signature_{'-'.join(args.model)}_b{args.batch}_{args.metrics}_{args.device}.json"
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "command": "python benchmarks/bench_signature.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def save(partial=None):  # after every child: a run cut short keeps what it measured
        done = rows + ([partial] if partial else [])
        out.write_text(json.dumps({"meta": meta, "rows": done}, indent=1))

    for name in args.model:
        row = bench_model(name, args, save)
        rows.append(row)
        print(_table(row), flush=True)
        save()
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3])
    else:
        main()
