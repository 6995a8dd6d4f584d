"""``affjax`` command line: signatures of torchvision models, model list, score demo.

The torch-dependent parts (weights, conversion, torchvision datasets) are
imported from ``converters`` only by the commands that need them; a machine
without torch can still run ``affjax signature --variables FILE --images FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- commands


def _cmd_models(args) -> int:
    from affjax import models

    families = models.registry.families()
    width = max(map(len, families))
    for family in families:
        print(f"{family:{width}s} {' '.join(models.list_models(family))}")
    return 0


_POLYNOMIALS = ((1, 1.00), (3, 0.71), (5, 0.58), (11, 0.40), (21, 0.29), (41, 0.20))
_ACTIVATIONS = (("ReLU", 0.49), ("Tanh", 0.67), ("Sigmoid", 0.77))


def demo_rows(solver: str = "auto") -> list[tuple[str, float, float]]:
    """The reference notebooks' figures: (case, published, ours)."""
    from affjax.score import affinity_score

    x = np.linspace(-1, 1, 1000)[:, None]
    rows = []
    for k, published in _POLYNOMIALS:
        rows.append(
            (
                f"x^{k} on linspace(-1, 1, 1000)",
                published,
                float(affinity_score(x, x**k, solver=solver).score),
            )
        )
    fns = {
        "ReLU": lambda v: np.maximum(v, 0),
        "Tanh": np.tanh,
        "Sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    }
    rng = np.random.RandomState(987)  # same stream as np.random.seed(987)
    for name, published in _ACTIVATIONS:
        v = rng.normal(-1, 2, (1000, 1))
        rows.append(
            (
                f"{name} of N(-1, 2^2), 1000 samples",
                published,
                float(affinity_score(v, fns[name](v), solver=solver).score),
            )
        )
    return rows


def _cmd_score_demo(args) -> int:
    print(f"{'case':40s} {'published':>9s} {'affjax':>9s}")
    for case, published, ours in demo_rows(args.solver):
        print(f"{case:40s} {published:9.2f} {ours:9.4f}")
    return 0


def file_sha256(path) -> str:
    """Content hash of a file (images, variables, weights): part of the resume key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _settings(args, name: str, dataset: str, info: dict) -> dict:
    """Everything that can change a record: the resume key and the JSON's settings.

    A finished batch of an interrupted run is reused only when these are equal,
    so a changed model, input file (by content), data folder or setting recomputes.
    """
    from affjax import __version__
    from affjax import precision as precision_lib
    from affjax.solvers import assignment

    settings = {
        "affjax": __version__,
        "model": name,
        "dataset": dataset,
        "batch_size": args.batch_size,
        "batch_id": args.batch_id,
        "seed": args.seed,
        "reduce": args.reduce,
        "metrics": list(args.metrics),
        "solver": assignment.resolve_solver(args.solver),
        "rtol": args.rtol,
        "dtype": precision_lib.resolve(args.dtype),
        "forward_precision": args.forward_precision,
        "functional": args.functional,
        "sites": args.sites,
        "feature_axis": args.feature_axis,
        "chunk_size": args.chunk_size,
        "devices": args.devices,
        "weights": info.get("weights"),
    }
    if args.images:
        if Path(args.images).is_file():  # else _batches says what is missing
            settings["images_sha256"] = file_sha256(args.images)
    elif dataset.lower() == "random":
        settings["num_random"] = args.num_random
    else:
        settings["data_dir"] = str(Path(args.data_dir).resolve())
    if args.variables:
        settings["variables_sha256"] = file_sha256(args.variables)
    elif args.weights not in ("random", None) and Path(args.weights).is_file():
        settings["weights_sha256"] = file_sha256(args.weights)
    return settings


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise CliError(f"cannot write to output directory {out}: {err.strerror or err}") from err


def _load_model(args):
    """(name, module, variables, info)."""
    if args.variables:
        from affjax.checkpoint import load_variables

        try:
            name, module, variables, meta = load_variables(args.variables)
        except (FileNotFoundError, ValueError) as err:
            raise CliError(str(err)) from err
        if args.model and args.model != name:
            raise CliError(f"{args.variables} holds {name}, not {args.model}")
        return name, module, variables, {**meta, "variables_file": str(args.variables)}
    if not args.model:
        raise CliError("give a MODEL name (see `affjax models`) or --variables FILE")
    from affjax.models import registry

    registry.get(args.model)  # unknown names fail before torch is imported
    from converters.cache import load  # converts once; a hit imports no torch

    loaded = load(args.model, args.weights, seed=args.seed)
    return loaded.name, loaded.module, loaded.variables, loaded.info


def _batches(args, name, image_size=None):
    """Yields (batch_index, loader) where loader() returns NHWC images.

    ``image_size``: the side a fixed-size model (ViT) was built for, so random
    weights get transforms of that size (see ``data.preprocess_for``).
    """
    if args.images:
        path = Path(args.images)
        if not path.is_file():
            raise CliError(f"images file {path} not found (expected a .npy of NHWC float32)")
        images = np.load(path, mmap_mode="r")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise CliError(f"{path} holds shape {images.shape}; expected NHWC [n, H, W, 3]")
        nb = images.shape[0] // args.batch_size
        if nb == 0:
            raise CliError(f"{path} holds {images.shape[0]} images < batch size {args.batch_size}")
        ids = range(nb) if args.batch_id == -1 else [args.batch_id]
        if args.batch_id >= nb:
            raise CliError(
                f"batch {args.batch_id} does not exist: {nb} batches of {args.batch_size} in {path}"
            )
        for b in ids:
            yield b, lambda b=b: np.asarray(images[b * args.batch_size : (b + 1) * args.batch_size])
        return
    from converters import data

    weights = None if args.variables else args.weights
    if weights is not None and (weights == "random" or Path(weights).suffix in (".pt", ".pth")):
        weights = None
    preprocess = data.preprocess_for(name, weights, image_size=image_size)
    dataset = data.make_dataset(
        args.dataset,
        Path(args.data_dir),
        preprocess,
        download=args.download,
        seed=args.seed,
        num_random=args.num_random,
    )
    nb = data.num_batches(dataset, args.batch_size)
    if args.batch_id != -1 and not 0 <= args.batch_id < nb:
        raise CliError(
            f"batch {args.batch_id} does not exist: {args.dataset} has {nb} "
            f"batches of {args.batch_size}"
        )
    ids = range(nb) if args.batch_id == -1 else [args.batch_id]
    for b in ids:
        yield b, lambda b=b: next(data.iter_batches(dataset, args.batch_size, b))[1]


def _dtype_option(args) -> None:
    """--precision is the deprecated name of --dtype (JAX's precision is matmul passes)."""
    if args.precision is not None:
        if args.dtype not in (None, args.precision):
            raise CliError(f"--dtype {args.dtype} and --precision {args.precision} disagree")
        print("affjax: warning: --precision is deprecated; use --dtype", file=sys.stderr)
        args.dtype = args.precision
    args.dtype = args.dtype or "auto"


def _sites(names: list[str] | None):
    """``--sites`` names -> the ``sites=`` of :func:`affjax.signature` (None: default sites)."""
    if not names:
        return None
    return names[0] if len(names) == 1 else tuple(names)


def _cmd_signature(args) -> int:
    from tqdm import tqdm

    from affjax import reports
    from affjax.signature import Signature, signature

    _dtype_option(args)
    out = Path(args.out)
    _check_out_dir(out)
    t0 = time.perf_counter()
    name, module, variables, info = _load_model(args)
    t_load = time.perf_counter() - t0
    dataset = "images:" + Path(args.images).name if args.images else args.dataset
    source = Path(args.images).stem if args.images else args.dataset  # no ':' in file names
    stem = f"{name}_{source}_{args.batch_size}_{args.batch_id}"
    if args.sites:  # never overwrite the default signature with another selection's
        stem += "_sites-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", "+".join(args.sites)).strip("-")
    partial_dir = out / f".{stem}.partial"
    settings = _settings(args, name, dataset, info)
    if args.rerun and partial_dir.exists():
        for f in partial_dir.glob("batch_*.json"):
            f.unlink()
    partial_dir.mkdir(exist_ok=True)
    with reports.atomic_write(partial_dir / "settings.json") as f:
        json.dump(settings, f, sort_keys=True)

    records, timings, notes = [], {"load_s": t_load, "batches": {}}, []
    batches = list(_batches(args, name, getattr(module, "image_size", None)))
    bar = tqdm(batches, desc=f"{name} {dataset}", unit="batch", disable=args.quiet)
    for b, get_images in bar:
        part = partial_dir / f"batch_{b:05d}.json"
        if part.exists():  # resume: this batch was finished by an earlier run
            payload = reports.read_json(part)
            if payload["meta"].get("settings") == settings:
                records.extend(payload["records"])
                notes.append(payload["meta"].get("note"))
                continue
        t1 = time.perf_counter()
        images = get_images()
        sig = signature(
            module,
            variables,
            images,
            reduce=args.reduce,
            metrics=args.metrics,
            chunk_size=args.chunk_size,
            solver=args.solver,
            dtype=args.dtype,
            forward_precision=args.forward_precision,
            functional=args.functional,
            rtol=args.rtol,
            sites=_sites(args.sites),
            feature_axis=args.feature_axis,
            devices=args.devices,
        )
        batch_records = [{"batch": b, **r} for r in sig.records()]
        timings["batches"][b] = time.perf_counter() - t1
        notes.append(sig.meta.get("note"))  # e.g. why a signature is empty
        reports.write_json(
            part, batch_records, {"settings": settings, "note": sig.meta.get("note")}
        )
        records.extend(batch_records)
    meta = {
        **settings,
        "info": info,
        "provenance": {
            **reports.provenance(),
            "dtype": settings["dtype"],
            "solver": settings["solver"],
            **{k: v for k, v in settings.items() if k.endswith("_sha256")},
        },
        "timings": {**timings, "total_s": time.perf_counter() - t0},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    note = "; ".join(dict.fromkeys(n for n in notes if n))
    if note:
        meta["note"] = note
        print(f"affjax: note: {note}", file=sys.stderr)
    result = Signature(records, meta)
    result.to_csv(out / f"{stem}.csv")
    result.to_json(out / f"{stem}.json")
    result.plot(out / f"{stem}.png", title=f"{name} on {dataset} ({args.reduce})")
    for f in partial_dir.glob("*.json"):
        f.unlink()
    partial_dir.rmdir()
    failed = result.failures()
    print(f"wrote {out / stem}.csv/.json/.png: {len(records)} calls", file=sys.stderr)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)
    loose = result.uncertified()
    if loose:
        print(
            f"affjax: warning: {len(loose)} call(s) are uncertified: the solver's gap is above "
            f"rtol * w2 (first: {loose[0]['layer']}[{loose[0]['call']}]); their scores are kept, "
            "see the gap column, a looser --rtol or float64",
            file=sys.stderr,
        )
    if failed:
        raise CliError(
            f"{len(failed)} call(s) could not be scored and are NaN in the outputs "
            f"(first: {failed[0]['layer']}: {failed[0]['status']})"
        )
    return 0


def _cmd_convert(args) -> int:
    from affjax.checkpoint import save_variables
    from affjax.models import registry

    registry.get(args.model)
    from converters.torchvision import load

    loaded = load(args.model, args.weights, seed=args.seed)
    save_variables(args.out, loaded.name, loaded.module, loaded.variables, meta=loaded.info)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- parser


def _devices_option(value: str) -> int | str:
    """``--devices``: a positive int or ``all``."""
    if value == "all":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {value!r}")
    return count


def _parser() -> argparse.ArgumentParser:
    from affjax.signature import METRICS, REDUCTIONS

    p = argparse.ArgumentParser(prog="affjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list supported torchvision models").set_defaults(fn=_cmd_models)

    demo = sub.add_parser("score-demo", help="reproduce the published toy figures")
    demo.add_argument("--solver", default="auto", choices=("auto", "host", "auction"))
    demo.set_defaults(fn=_cmd_score_demo)

    s = sub.add_parser("signature", help="non-linearity signature of a model on a dataset")
    s.add_argument("model", nargs="?", help="torchvision name, e.g. resnet18")
    s.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT, an enum name (IMAGENET1K_V1...), random, or a state_dict path",
    )
    s.add_argument("--variables", help="converted variables from `affjax convert` (no torch)")
    s.add_argument(
        "--dataset",
        default="random",
        help="random, cifar10, cifar100, fashionMNIST, imagenet or a folder name",
    )
    s.add_argument("--images", help="a .npy of preprocessed NHWC float32 images (no torch)")
    s.add_argument("--data-dir", default="./data")
    s.add_argument("--download", action="store_true", help="let torchvision fetch the dataset")
    s.add_argument("--batch-size", type=int, default=2048)
    s.add_argument("--batch-id", type=int, default=0, help="-1: every batch")
    s.add_argument("--num-random", type=int, default=10000, help="size of the random dataset")
    s.add_argument("--seed", type=int, default=987)
    s.add_argument("--reduce", default="reference", choices=REDUCTIONS)
    s.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    s.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="images per forward pass (memory); default: whole batch",
    )
    s.add_argument(
        "--devices",
        type=_devices_option,
        default=None,
        metavar="N|all",
        help="split the forward over the batch and the scores over the calls on N local "
        "devices, or all of them (default: one device; same results)",
    )
    s.add_argument("--solver", default="auto", choices=("auto", "host", "auction"))
    s.add_argument(
        "--rtol",
        type=float,
        default=1e-6,
        help="relative duality gap the auction must certify (else status 'uncertified')",
    )
    s.add_argument(
        "--dtype",
        default=None,
        choices=("auto", "float64", "float32"),
        help="dtype of the score math (default auto: float64, float32 on TPU)",
    )
    s.add_argument(
        "--precision",
        default=None,
        choices=("auto", "float64", "float32"),
        help="deprecated alias of --dtype",
    )
    s.add_argument(
        "--forward-precision",
        default="highest",
        choices=("highest", "default"),
        help="matmul/conv precision of the model forward: highest (float32 products) or "
        "the platform default (bfloat16 passes on TPU, TF32 convs on GPU; faster, less exact)",
    )
    s.add_argument(
        "--functional",
        action="store_true",
        help="also score F.relu-style calls (keys 'path:F.relu'; not in the reference)",
    )
    s.add_argument(
        "--sites",
        nargs="+",
        metavar="NAME_OR_GLOB",
        help="score these calls instead of the activation sites: class names (BasicBlock), "
        "activation kinds (ReLU), Flax paths (layer1_0) or path globs ('layer*/relu'); "
        "each call is scored from its input to its output",
    )
    s.add_argument(
        "--feature-axis",
        type=int,
        default=-1,
        help="axis kept when a --sites call's tensors are reduced to [n, d] (default: last)",
    )
    s.add_argument("--out", default="results")
    s.add_argument("--rerun", action="store_true", help="ignore finished batches of a resumed run")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_signature)

    c = sub.add_parser("convert", help="save converted Flax variables for torch-free use")
    c.add_argument("model")
    c.add_argument("--weights", default="DEFAULT")
    c.add_argument("--seed", type=int, default=987)
    c.add_argument("--out", required=True, help="output .msgpack path")
    c.set_defaults(fn=_cmd_convert)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from affjax.models.registry import UnknownModelError
    from affjax.signature import SignatureError

    errors: list[type[BaseException]] = [CliError, UnknownModelError, SignatureError]
    # Only modules that ran can have raised their errors: importing others would import
    # torch after a run that did without it (a converted-weights cache hit).
    for module, names in (
        ("converters.data", ("DataError",)),
        ("converters.torchvision", ("ConversionError",)),
        ("converters.weights", ("WeightsError",)),
    ):
        if module in sys.modules:
            errors += [getattr(sys.modules[module], n) for n in names]
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "batch_size", 2) < 2:
        print(
            "affjax: error: --batch-size must be at least 2 (covariances need 2 samples)",
            file=sys.stderr,
        )
        return 2
    if args.command == "signature":
        from affjax import compilation_cache

        compilation_cache.enable_default()
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(
            "affjax: interrupted; finished batches are kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # noqa: BLE001 - user errors become one line, others re-raise
        if isinstance(err, _user_errors()):
            msg = " ".join(str(err).split())
            print(f"affjax: error: {msg}", file=sys.stderr)
            return 2
        if isinstance(err, OSError) and os.environ.get("AFFJAX_DEBUG") is None:
            print(f"affjax: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
