"""torchvision weights: name resolution and the per-model metadata the reference records.

One place for both, used by the weights loader (:mod:`converters.torchvision`)
and the data transforms (:mod:`converters.data`).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torchvision

__all__ = ["WeightsError", "model_info", "resolve", "weights_enum"]


class WeightsError(RuntimeError):
    """Weights could not be obtained (offline, bad path, unknown name)."""


_LIST_MODELS_HINT = (
    'run `python -c "import torchvision; '
    'print(torchvision.models.list_models(module=torchvision.models))"` '
    "to see the supported names"
)


def weights_enum(model_name: str):
    """The ``WeightsEnum`` class of a torchvision image classifier.

    Raises:
        WeightsError: ``model_name`` is not a torchvision classifier (detection,
            segmentation and video models are registered too, but their transforms
            do not resize to a fixed size).
    """
    names = torchvision.models.list_models(module=torchvision.models)
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise WeightsError(
            f"Unknown torchvision classification model {model_name!r}{hint}; {_LIST_MODELS_HINT}."
        )
    return torchvision.models.get_model_weights(model_name)


def resolve(model_name: str, weights=None):
    """A member of the model's weights enum.

    Args:
        model_name: torchvision classifier name.
        weights: ``None`` or ``"random"`` (the DEFAULT member: what a randomly
            initialised model would be evaluated with), a member name
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``), a qualified name
            (``"ResNet18_Weights.IMAGENET1K_V1"``) or a member.

    Raises:
        WeightsError: unknown model or weights, with the valid choices.
    """
    enum = weights_enum(model_name)
    if weights is None or (isinstance(weights, str) and weights.lower() == "random"):
        return enum.DEFAULT
    if isinstance(weights, enum):
        return weights
    if not isinstance(weights, str):
        raise WeightsError(f"Weights must be a name or None, got {type(weights).__name__}.")
    enum_name, _, member = weights.rpartition(".")
    if enum_name and enum_name != enum.__name__:
        raise WeightsError(
            f"Weights {weights!r} do not belong to model {model_name!r} "
            f"(its weights are {enum.__name__}.*)."
        )
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
    except KeyError:
        options = ", ".join(["DEFAULT", *enum.__members__, "random", "<path to state_dict>"])
        raise WeightsError(
            f"unknown weights {weights!r} for {model_name}; choose one of {options}"
        ) from None


def model_info(model: torch.nn.Module, weights: Any = None) -> dict[str, Any]:
    """The reference's per-model metadata (its ``metaInfo``).

    Args:
        model: the torch model.
        weights: optional weights enum member; its ImageNet-1K ``acc@1`` /
            ``acc@5`` are copied when the metadata has them.

    Returns:
        ``acc@1``, ``acc@5`` (when ``weights`` is given), ``total_params``,
        ``trainable_total_params`` and ``depth`` (named modules, root included).
    """
    info: dict[str, Any] = {}
    if weights is not None:
        imagenet = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
        for metric in ("acc@1", "acc@5"):
            info[metric] = imagenet.get(metric)
    info["total_params"] = sum(p.numel() for p in model.parameters())
    info["trainable_total_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["depth"] = len(list(model.named_modules()))
    return info
