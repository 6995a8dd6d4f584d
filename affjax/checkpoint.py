"""Converted variables on disk, torch-free.

A machine with torch converts once (``affjax convert``); any machine with JAX
loads the file and computes signatures without torch. Two layouts, told apart
by their first bytes when read:

* ``"msgpack"`` (:data:`FORMAT`, the default): ``flax.serialization``'s
  msgpack, readable by any Flax user;
* ``"raw"`` (:data:`RAW_FORMAT`, the converted-weights cache's): a JSON header,
  then each array's bytes at a 64-byte boundary. Reading is one ``readinto``
  of the whole file plus views into it, and the views are aligned so JAX's
  CPU client can use them without a copy: alexnet's 244 MB load in 0.15 s
  against 0.6 s through msgpack (2-core dev machine, warm page cache).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from affjax import models, reports

__all__ = ["FORMAT", "RAW_FORMAT", "load_variables", "module_config", "save_variables"]

FORMAT = "affjax.variables/1"
RAW_FORMAT = "affjax.variables/raw1"
_MAGIC = b"AFFJAXV\x01"  # then the header's length (little-endian uint64) and the header
_ALIGN = 64


def module_config(module: nn.Module) -> dict:
    """The module's scalar settings (``transform_input``, ``image_size``...), JSON-able: what
    a file holds besides the name, so ``get_model(name, num_classes=..., **config)`` rebuilds
    the module (settings of other types come from the preset)."""
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.name not in ("name", "parent", "num_classes")
        and isinstance(getattr(module, f.name), bool | int | float | str)
    }


def _up(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def save_variables(
    path,
    name: str,
    module: nn.Module,
    variables: dict,
    *,
    meta: dict | None = None,
    layout: str = "msgpack",
) -> None:
    """Writes the variables of ``module`` (model ``name``) atomically to ``path``.

    ``layout``: ``"msgpack"`` (portable) or ``"raw"`` (loads several times
    faster); :func:`load_variables` reads both.
    """
    models.registry.get(name)
    if layout not in ("msgpack", "raw"):
        raise ValueError(f"layout must be 'msgpack' or 'raw', got {layout!r}")
    kept = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    payload = {
        "format": FORMAT if layout == "msgpack" else RAW_FORMAT,
        "model": name,
        "num_classes": int(module.num_classes),
        "meta": json.dumps(meta or {}, default=str),
        "config": json.dumps(module_config(module)),
    }
    with reports.atomic_write(path, "wb") as f:
        if layout == "msgpack":
            f.write(serialization.msgpack_serialize({**payload, "variables": kept}, in_place=False))
            return
        arrays, entries, end = [], [], 0
        for key, value in traverse_util.flatten_dict(kept).items():
            a = np.asarray(value)
            a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray: 0-d -> 1-d)
            start = _up(end)
            entry = {"path": list(key), "dtype": a.dtype.name, "shape": a.shape, "at": start}
            entries.append(entry)
            arrays.append((start, a))
            end = start + a.nbytes
        header = json.dumps({**payload, "arrays": entries, "bytes": end}).encode()
        head = _MAGIC + struct.pack("<Q", len(header)) + header
        data = _up(len(head))
        f.write(head + b"\0" * (data - len(head)))
        for start, a in arrays:
            f.write(b"\0" * (data + start - f.tell()))
            f.write(a.tobytes())


def _read_raw(blob: np.ndarray) -> dict:
    """The payload of a ``"raw"`` file read into ``blob`` (64-byte aligned)."""
    size = blob.size
    if size < len(_MAGIC) + 8:
        raise ValueError("truncated header")
    (length,) = struct.unpack("<Q", blob[len(_MAGIC) : len(_MAGIC) + 8].tobytes())
    begin = len(_MAGIC) + 8
    if begin + length > size:
        raise ValueError("truncated header")
    payload = json.loads(blob[begin : begin + length].tobytes())
    data = _up(begin + length)
    if data + payload["bytes"] > size:
        raise ValueError(f"truncated: {size} bytes, the header says {data + payload['bytes']}")
    flat = {}
    for e in payload.pop("arrays"):
        dtype = jnp.dtype(e["dtype"])  # bfloat16 too
        count = int(np.prod(e["shape"], dtype=np.int64))
        start = data + e["at"]
        view = blob[start : start + count * dtype.itemsize].view(dtype)
        flat[tuple(e["path"])] = view.reshape(tuple(e["shape"]))
    payload["variables"] = traverse_util.unflatten_dict(flat)
    return payload


def _read(path: Path) -> dict:
    size = path.stat().st_size
    raw = np.empty(size + _ALIGN, np.uint8)  # aligned, so JAX's CPU client needs no copy
    skip = (-raw.ctypes.data) % _ALIGN
    blob = raw[skip : skip + size]
    with open(path, "rb") as f:
        if f.readinto(memoryview(blob)) != size:
            raise ValueError("the file changed while it was read")
    if blob[: len(_MAGIC)].tobytes() == _MAGIC:
        return _read_raw(blob)
    return serialization.msgpack_restore(blob.tobytes())


def load_variables(path) -> tuple[str, nn.Module, dict, dict]:
    """Reads a file from :func:`save_variables`: ``(name, module, variables, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variables file {path} not found (make one with `affjax convert`)")
    try:
        payload = _read(path)
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(
            f"{path} is not an affjax variables file ({FORMAT}; unreadable: {err}); "
            "make one with `affjax convert`"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, RAW_FORMAT):
        raise ValueError(
            f"{path} is not an affjax variables file ({FORMAT}); make one with `affjax convert`"
        )
    name = payload["model"]
    config = json.loads(payload.get("config", "{}"))
    module = models.get_model(name, num_classes=payload["num_classes"], **config)
    return name, module, payload["variables"], json.loads(payload["meta"])
