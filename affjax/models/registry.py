"""One registry mapping torchvision model names to Flax presets."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn

__all__ = [
    "ModelSpec",
    "VERBATIM",
    "UnknownModelError",
    "families",
    "get",
    "list_models",
    "register",
    "specs",
    "torch_path",
]


class ModelSpec(NamedTuple):
    name: str  # torchvision name, e.g. "resnet18"
    family: str  # file in affjax/models, e.g. "resnet"
    build: Callable[..., nn.Module]  # build(num_classes=1000) -> module
    torch_class: str  # torchvision class name, e.g. "ResNet" (to convert bare instances)
    # Activation calls are all torch.nn.functional calls (GoogLeNet, Inception-v3):
    # the reference's signature is empty, `functional=True` gives the full one.
    functional_only: bool = False
    # kwargs for ``build`` read off a torchvision instance (``transform_input``,
    # ``image_size``...): attribute reads only, so affjax stays torch-free.
    from_torch: Callable[[Any], dict] | None = None
    # state_dict key prefixes of modules unused in eval (GoogLeNet's ``aux1.``)
    # that the converter drops instead of reporting them unexpected.
    ignore_torch_keys: tuple[str, ...] = ()


class UnknownModelError(ValueError):
    """A model name that no family registered."""


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    family: str,
    build: Callable[..., nn.Module],
    *,
    torch_class: str,
    functional_only: bool = False,
    from_torch: Callable[[Any], dict] | None = None,
    ignore_torch_keys: tuple[str, ...] = (),
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = ModelSpec(
        name, family, build, torch_class, functional_only, from_torch, tuple(ignore_torch_keys)
    )


def specs() -> list[ModelSpec]:
    """Every registered model, in registration order."""
    return list(_REGISTRY.values())


def families() -> list[str]:
    """Family names in registration order."""
    return list(dict.fromkeys(s.family for s in _REGISTRY.values()))


def list_models(family: str | None = None) -> list[str]:
    """Supported torchvision names, in registration order."""
    return [s.name for s in _REGISTRY.values() if family is None or s.family == family]


def get(name: str) -> ModelSpec:
    """The spec of a supported model; a clear error with suggestions otherwise."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `affjax models` lists the {len(_REGISTRY)} supported."
        )
    return _REGISTRY[name]


_INDEX = re.compile(r"_(\d+)$")
#: Prefix of a Flax module name that is a torch attribute name as it stands.
VERBATIM = "="


def torch_path(flax_path: tuple[str, ...] | list[str]) -> str:
    """Dotted torch attribute path of a Flax module path.

    Flax submodules are named after torchvision attributes; a ``Sequential``
    index is joined with ``_`` (torch ``layer1.0`` -> Flax ``layer1_0``), so a
    trailing ``_<digits>`` turns back into ``.<digits>``. Modules may also be
    nested under torch's own names (``("features", "0", "block")``, or
    ``"block1-0"``), which pass through unchanged. For torch attributes whose own
    name ends in ``_<digits>``, a Flax name is taken verbatim when it starts with
    ``=`` (Inception-v3's ``branch5x5_1`` is Flax ``"=branch5x5_1"``) or holds a
    ``.`` (ViT's ``"layers.encoder_layer_0.ln_1"``).
    """

    def part_path(part: str) -> str:
        if part.startswith(VERBATIM):
            return part[1:]
        return part if "." in part else _INDEX.sub(r".\1", part)

    return ".".join(part_path(part) for part in flax_path)
