"""torchvision models -> Flax modules and variables.

Conversion is a handful of generic rules, because Flax submodules carry
torchvision's attribute names (:func:`affjax.models.torch_path`):

========================  ============================  =========================
Flax leaf                 torch state_dict entry         transform
========================  ============================  =========================
``params/.../kernel`` 4-D ``....weight`` [O, I/g, H, W]  -> [H, W, I/g, O]
``params/.../kernel`` 2-D ``....weight`` [out, in]       transpose
``params/.../scale``      ``....weight`` (BatchNorm)     as is
``params/.../bias``       ``....bias``                   as is
``batch_stats/.../mean``  ``....running_mean``           as is
``batch_stats/.../var``   ``....running_var``            as is
``params/.../<other>``    ``....<other>``                as is (torch Parameters kept
                                                         under their own name:
                                                         ``class_token``, PReLU ``weight``)
========================  ============================  =========================

The merge is strict: it fails with the lists of missing, unexpected and
mis-shaped keys instead of guessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from affjax import models
from affjax.models import registry
from converters.weights import WeightsError, model_info
from converters.weights import resolve as resolve_weights

__all__ = [
    "ConversionError",
    "Loaded",
    "WeightsError",
    "convert",
    "flax_to_torch_key",
    "load",
    "model_info",
]

_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# Buffers the Flax modules do not hold: BatchNorm's step counter, and index tables
# derived from the config that the ports recompute (Swin, MaxViT).
_IGNORED_SUFFIXES = ("num_batches_tracked", "relative_position_index", "relative_coords_table")


class ConversionError(ValueError):
    """The torch state_dict does not fit the Flax module."""


def flax_to_torch_key(path: tuple[str, ...]) -> str:
    """``("params", "layer1_0", "conv1", "kernel")`` -> ``"layer1.0.conv1.weight"``."""
    collection, *modules, leaf = path
    suffix = _LEAVES.get((collection, leaf))
    if suffix is None and collection == "params":
        suffix = leaf  # a torch Parameter kept under its own name
    if suffix is None:
        raise ConversionError(f"no torch counterpart for Flax leaf {'/'.join(path)}")
    if not modules:
        return suffix
    return f"{registry.torch_path(modules)}.{suffix}"


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _template(module: nn.Module) -> dict:
    # Parameter shapes of convolutional models do not depend on the image size;
    # models with position embeddings carry theirs as a module attribute.
    image_size = getattr(module, "image_size", 224)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)
    # init makes every collection mutable, the capture one too: keep variables only.
    return {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}


def _merge(template: dict, state: dict[str, np.ndarray], ignore: tuple[str, ...] = ()) -> dict:
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves, missing, misshaped, used = [], [], [], set()
    for keypath, spec in flat:
        path = tuple(k.key for k in keypath)
        key = flax_to_torch_key(path)
        if key not in state:
            missing.append(key)
            leaves.append(None)
            continue
        used.add(key)
        value = _to_flax(state[key], path[-1])
        if tuple(value.shape) != tuple(spec.shape):
            misshaped.append(
                f"{key}: torch {tuple(state[key].shape)} -> {value.shape}, "
                f"Flax expects {tuple(spec.shape)}"
            )
        leaves.append(jnp.asarray(value, spec.dtype))
    unexpected = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if missing or unexpected or misshaped:
        parts = [
            f"{title} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for title, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", misshaped),
            )
            if keys
        ]
        raise ConversionError("state_dict does not match the Flax module; " + "; ".join(parts))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _num_classes(state: dict[str, Any]) -> int:
    # torchvision classifiers end with their classifier's bias: out features.
    last_bias = [k for k in state if k.endswith(".bias")][-1]
    return int(state[last_bias].shape[0])


def _state_numpy(torch_model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}


def _candidates(torch_model: torch.nn.Module, name: str | None) -> list[str]:
    if name is not None:
        registry.get(name)
        return [name]
    cls = type(torch_model).__name__
    names = [s.name for s in registry.specs() if s.torch_class == cls]
    if not names:
        raise ConversionError(
            f"no Flax port for torch class {cls}; `affjax models` lists the supported models"
        )
    return names


def convert(torch_model: torch.nn.Module, name: str | None = None) -> tuple[nn.Module, dict]:
    """Flax module and variables equivalent to a torchvision model instance.

    Args:
        torch_model: a supported torchvision classifier (any weights).
        name: its torchvision name; inferred from the class and the
            state_dict's shapes when omitted.

    Returns:
        ``(module, variables)`` with ``module.apply(variables, images)`` on NHWC
        float images giving the torch model's logits.

    Raises:
        ConversionError: unsupported model, or a state_dict that does not fit
            (with the missing, unexpected and mis-shaped keys).
    """
    state = _state_numpy(torch_model)
    num_classes = _num_classes(state)
    errors = []
    for candidate in _candidates(torch_model, name):
        spec = registry.get(candidate)
        # from_torch may set num_classes itself (MaxViT's classifier has no bias).
        config = {"num_classes": num_classes}
        config.update(spec.from_torch(torch_model) if spec.from_torch else {})
        module = models.get_model(candidate, **config)
        try:
            return module, _merge(_template(module), state, spec.ignore_torch_keys)
        except ConversionError as err:
            errors.append(f"{candidate}: {err}")
    if len(errors) == 1:
        raise ConversionError(errors[0])
    raise ConversionError(
        "no preset of this family fits the state_dict:\n" + "\n".join(e[:300] for e in errors)
    )


class Loaded(NamedTuple):
    name: str
    module: nn.Module
    variables: dict
    torch_model: torch.nn.Module
    weights: Any  # torchvision WeightsEnum member, or None
    info: dict  # provenance: weights, acc@1/acc@5 when known, params, depth


def load(name: str, weights: str = "DEFAULT", *, seed: int = 0) -> Loaded:
    """Builds a supported torchvision model with weights and converts it.

    Args:
        name: torchvision name (``affjax models`` lists them).
        weights: ``"DEFAULT"``, an enum member name such as ``"IMAGENET1K_V1"``,
            ``"random"`` (torchvision's initialisation after
            ``torch.manual_seed(seed)``) or a path to a saved ``state_dict``.
        seed: seed for ``"random"``.

    Raises:
        registry.UnknownModelError: unsupported name.
        WeightsError: weights unavailable (offline download, missing file).
    """
    registry.get(name)
    weights_enum = None
    if weights == "random":
        torch.manual_seed(seed)
        torch_model = torchvision.models.get_model(name, weights=None)
    elif os.path.sep in weights or weights.endswith((".pt", ".pth")) or Path(weights).exists():
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"state_dict file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the path and what to do
            raise WeightsError(f"could not read a state_dict from {path}: {err}") from err
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        torch_model = torchvision.models.get_model(name, weights=None)
        try:
            torch_model.load_state_dict(state)
        except RuntimeError as err:
            raise WeightsError(f"{path} does not fit {name}: {err}") from err
    else:
        weights_enum = resolve_weights(name, weights)
        try:
            torch_model = torchvision.models.get_model(name, weights=weights_enum)
        except Exception as err:  # noqa: BLE001 - urllib/OSError/RuntimeError when offline
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise WeightsError(
                f"could not get {name} weights {weights_enum.name}: {type(err).__name__}: "
                f"{str(err)[:200]}. Without a network, download {weights_enum.url} on another "
                f"machine into {cache}, or pass --weights random or --weights PATH.pt"
            ) from err
    torch_model.eval()
    module, variables = convert(torch_model, name)
    info = {
        "weights": weights if weights_enum is None else weights_enum.name,
        **model_info(torch_model, weights_enum),
    }
    return Loaded(name, module, variables, torch_model, weights_enum, info)
