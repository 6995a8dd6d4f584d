"""Flax ports of torchvision classifiers, one file per family.

``get_model("resnet18")`` builds a module; ``list_models()`` names them all.
"""

from __future__ import annotations

import flax.linen as nn

from affjax.models import alexnet as alexnet  # noqa: F401  (registers presets)
from affjax.models import densenet as densenet  # noqa: F401  (registers presets)
from affjax.models import layers, registry
from affjax.models import resnet as resnet  # noqa: F401  (registers presets)
from affjax.models import squeezenet as squeezenet  # noqa: F401  (registers presets)
from affjax.models import vgg as vgg  # noqa: F401  (registers presets)
from affjax.models.registry import UnknownModelError, list_models, torch_path

__all__ = ["UnknownModelError", "get_model", "layers", "list_models", "registry", "torch_path"]


def get_model(name: str, *, num_classes: int = 1000) -> nn.Module:
    """Flax module for a torchvision model name (see :func:`list_models`)."""
    return registry.get(name).build(num_classes=num_classes)
