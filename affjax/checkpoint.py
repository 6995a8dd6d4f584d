"""Converted variables on disk (msgpack via ``flax.serialization``), torch-free.

A machine with torch converts once (``affjax convert``); any machine with JAX
loads the file and computes signatures without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
from flax import serialization

from affjax import models, reports

__all__ = ["FORMAT", "load_variables", "save_variables"]

FORMAT = "affjax.variables/1"


def save_variables(
    path, name: str, module: nn.Module, variables: dict, *, meta: dict | None = None
) -> None:
    """Writes the variables of ``module`` (model ``name``) atomically to ``path``."""
    models.registry.get(name)
    payload = {
        "format": FORMAT,
        "model": name,
        "num_classes": int(module.num_classes),
        "meta": json.dumps(meta or {}, default=str),
        "variables": {k: v for k, v in variables.items() if k in ("params", "batch_stats")},
    }
    data = serialization.msgpack_serialize(payload, in_place=False)
    with reports.atomic_write(path, "wb") as f:
        f.write(data)


def load_variables(path) -> tuple[str, nn.Module, dict, dict]:
    """Reads a file from :func:`save_variables`: ``(name, module, variables, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variables file {path} not found (make one with `affjax convert`)")
    payload = serialization.msgpack_restore(path.read_bytes())
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an affjax variables file ({FORMAT})")
    name = payload["model"]
    module = models.get_model(name, num_classes=payload["num_classes"])
    return name, module, payload["variables"], json.loads(payload["meta"])
