"""Signature tables on disk: CSV, JSON with provenance, PNG plots. Writes are atomic."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import tempfile
from pathlib import Path

__all__ = [
    "SCHEMA",
    "atomic_write",
    "provenance",
    "plot_signature",
    "read_json",
    "write_csv",
    "write_json",
]

#: Version of the JSON layout; bump on incompatible changes.
SCHEMA = "affjax.signature/1"


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Write to a temporary file in the same folder, then rename over ``path``.

    An interrupted run leaves either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _columns(records: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in records:
        cols.extend(k for k in r if k not in cols)
    return cols


def write_csv(path, records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(records))
    writer.writeheader()
    writer.writerows(records)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; the record's status says why
    return v


def write_json(path, records: list[dict], meta: dict) -> None:
    payload = {
        "schema": SCHEMA,
        "meta": meta,
        "records": [{k: _jsonable(v) for k, v in r.items()} for r in records],
    }
    with atomic_write(path) as f:
        json.dump(payload, f, indent=1, default=str)


def read_json(path) -> dict:
    with open(path) as f:
        payload = json.load(f)
    if payload.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {payload.get('schema')!r}, expected {SCHEMA!r}")
    for r in payload["records"]:
        for k, v in r.items():
            if v is None:
                r[k] = float("nan")
    return payload


def provenance() -> dict:
    """Versions and the device actually used, for the JSON's metadata."""
    import sys
    from importlib import metadata

    import jax

    versions = {}
    for package in ("affjax", "jax", "jaxlib", "flax", "numpy", "scipy", "torch", "torchvision"):
        # torch only when this process imported it (a torch-free run says so by omission)
        if package in ("torch", "torchvision") and package not in sys.modules:
            continue
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        **versions,
        "backend": jax.default_backend(),
        "device": str(device.device_kind),
        "device_count": jax.device_count(),
        "platform": platform.platform(),
    }


def plot_signature(
    path, records: list[dict], metric: str = "aff_score", title: str | None = None
) -> None:
    """Line plot of ``metric`` over the calls, one line per batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches: dict = {}
    for r in records:
        batches.setdefault(r.get("batch", 0), []).append(r)
    fig, ax = plt.subplots(figsize=(max(6, min(24, 0.15 * len(records) + 4)), 3.5))
    for b, recs in batches.items():
        ax.plot(
            range(len(recs)),
            [r[metric] for r in recs],
            marker=".",
            lw=1,
            label=f"batch {b}" if len(batches) > 1 else None,
        )
    ax.set_xlabel("activation call (execution order)")
    ax.set_ylabel(metric)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(batches) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
