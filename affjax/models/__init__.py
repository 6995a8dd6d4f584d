"""Flax ports of torchvision classifiers, one file per family.

``get_model("resnet18")`` builds a module; ``list_models()`` names them all.
Every module of this package other than ``layers`` and ``registry`` is a
family and registers its presets when imported; they are imported here in
alphabetical order, so adding a family is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

import flax.linen as nn

from affjax.models import layers, registry
from affjax.models.registry import UnknownModelError, list_models, torch_path

__all__ = ["UnknownModelError", "get_model", "layers", "list_models", "registry", "torch_path"]

_NOT_FAMILIES = {"layers", "registry"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _NOT_FAMILIES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def get_model(name: str, *, num_classes: int = 1000, **config) -> nn.Module:
    """Flax module for a torchvision model name (see :func:`list_models`).

    ``config``: preset overrides the family accepts (e.g. ``transform_input``).
    """
    return registry.get(name).build(num_classes=num_classes, **config)
