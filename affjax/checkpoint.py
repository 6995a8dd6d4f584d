"""Converted variables on disk (msgpack via ``flax.serialization``), torch-free.

A machine with torch converts once (``affjax convert``); any machine with JAX
loads the file and computes signatures without torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
from flax import serialization

from affjax import models, reports

__all__ = ["FORMAT", "load_variables", "module_config", "save_variables"]

FORMAT = "affjax.variables/1"


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
        "config": json.dumps(module_config(module)),
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
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(
            f"{path} is not an affjax variables file ({FORMAT}; unreadable: {err}); "
            "make one with `affjax convert`"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an affjax variables file ({FORMAT}); make one with `affjax convert`"
        )
    name = payload["model"]
    config = json.loads(payload.get("config", "{}"))
    module = models.get_model(name, num_classes=payload["num_classes"], **config)
    return name, module, payload["variables"], json.loads(payload["meta"])
