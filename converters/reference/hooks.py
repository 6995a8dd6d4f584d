"""Signatures of torch models through forward hooks, as the published code records them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from converters.reference._common import ACTIVATION_CLASS_NAMES, DEFAULT_METRICS, _check_dtype
from converters.reference.metrics import entropy_batch, linear_cka, norm_diff, r2_score, sparsity
from converters.reference.score import rho_aff


def reduce_activation(t: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reduces an activation tensor to ``[n, d]`` (torch layout).

    4-D ``[n, c, h, w]``: mean over the spatial dims; 3-D: mean over the last
    dim (for ``[n, tokens, channels]`` this averages channels, as published);
    anything else is returned as is (a copy). In float64 mode the mean is
    accumulated in float64.

    Args:
        t: Activation tensor.
        dtype: working dtype of the result.

    Returns:
        The reduced tensor, in ``dtype``.
    """
    _check_dtype(dtype)
    t = t.detach()
    mean_dtype = torch.float64 if dtype == torch.float64 else None
    if t.ndim == 4:
        out = torch.mean(t, dim=(-2, -1), dtype=mean_dtype)
    elif t.ndim == 3:
        out = torch.mean(t, dim=-1, dtype=mean_dtype)
    else:
        out = t.clone()
    return out.to(dtype)


# ---------------------------------------------------------------------------
# Signatures of torch models
# ---------------------------------------------------------------------------


def _activation_keys(name: str, module: torch.nn.Module) -> list[str]:
    """Result keys of ``module`` (empty when it is not hooked), published rules."""
    if "MultiheadAttention" in module._get_name():
        return []
    if "attn" in name.split("."):
        return []
    return [
        f"{name}_{cls_name}"
        for cls_name in ACTIVATION_CLASS_NAMES
        if isinstance(module, getattr(torch.nn, cls_name))
    ]


def _record(
    store: dict[str, list],
    module: torch.nn.Module,
    inp: torch.Tensor,
    *,
    metrics: Sequence[str],
    dtype: torch.dtype,
    keep_features: bool,
    clone_input: bool,
) -> None:
    """Computes the metrics of one activation call and appends them to ``store``."""
    if clone_input:
        inp = inp.clone()
    # Everything derived from the input is computed before the module runs, as
    # published: with clone_input=False an in-place module overwrites ``inp``.
    sparsity_before = sparsity(inp, dtype=dtype) if "sparsity_before" in metrics else None
    x2d = reduce_activation(inp, dtype=dtype)
    out = module.forward(inp)
    y2d = reduce_activation(out, dtype=dtype)

    values: dict[str, float] = {}
    if sparsity_before is not None:
        values["sparsity_before"] = sparsity_before
    if "aff_score" in metrics:
        values["aff_score"] = rho_aff(x2d, y2d, dtype=dtype)
    if "aff_score_corrected" in metrics:
        values["aff_score_corrected"] = rho_aff(x2d, y2d, correct_cov=True, dtype=dtype)
    if "cka_score" in metrics:
        values["cka_score"] = linear_cka(x2d, y2d, dtype=dtype)
    if "ent_before" in metrics:
        values["ent_before"] = entropy_batch(x2d, dtype=dtype)
    if "ent_after" in metrics:
        values["ent_after"] = entropy_batch(y2d, dtype=dtype)
    if "sparsity_after" in metrics:
        values["sparsity_after"] = sparsity(out, dtype=dtype)
    if "norm_diff" in metrics:
        values["norm_diff"] = norm_diff(x2d, y2d, dtype=dtype)
    if "r2_score" in metrics:
        values["r2_score"] = r2_score(x2d, y2d, dtype=dtype)

    for metric in metrics:
        store[metric].append(values[metric])
    if keep_features:
        store["input2d"].append(x2d.cpu().to(torch.float64).numpy())
        store["output2d"].append(y2d.cpu().to(torch.float64).numpy())


def reference_signature(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    metrics: Iterable[str] = DEFAULT_METRICS,
    dtype: torch.dtype = torch.float32,
    keep_features: bool = False,
    clone_input: bool = True,
    replicate_dict_aliasing: bool = False,
) -> dict[str, dict[str, list]]:
    """Non-linearity signature of a torch model on one batch (published hooks).

    Every module of ``model.named_modules()`` that is an instance of a class in
    :data:`ACTIVATION_CLASS_NAMES` gets a forward pre-hook, except modules
    whose class name contains ``MultiheadAttention`` and modules with a
    dotted-name component exactly ``attn``. The hook receives the module input,
    computes the output itself with ``module.forward``, reduces both to
    ``[n, d]`` (:func:`reduce_activation`), computes the metrics and appends
    one entry per call to ``result[key][metric]`` (a module called several
    times in one forward pass, like the shared ``relu`` of torchvision ResNet
    blocks, gets several entries). Keys are ``f"{name}_{ClassName}"``.

    A module is tested against every class of the list, and each match makes a
    key: ``ReLU6`` subclasses ``Hardtanh``, so an ``nn.ReLU6`` is recorded under
    both ``<name>_Hardtanh`` and ``<name>_ReLU6`` (in that order), with
    identical values. The published code registers both hooks but stores
    through a single ``module.dict`` attribute that the second registration
    overwrites, so its ``_Hardtanh`` lists stay empty and its ``_ReLU6`` lists
    get two identical entries per call; ``replicate_dict_aliasing=True``
    reproduces that.

    Keys appear in ``named_modules`` order and exist (with empty lists) even
    for hooked modules that the forward pass never calls. Hooks are removed and
    the train/eval mode of ``model`` is restored on return.

    Args:
        model: The torch model (run in eval mode under ``torch.no_grad``).
        images: The input batch, already on the model's device.
        metrics: Metric names, a subset of :data:`DEFAULT_METRICS`.
        dtype: ``torch.float32`` (published) or ``torch.float64`` for the
            metric computations; the model itself runs in its own dtype.
        keep_features: also store the reduced inputs/outputs of each call as
            float64 NumPy arrays under ``"input2d"`` / ``"output2d"``.
        clone_input: clone the activation input before calling the module.
            The published hook did not: an in-place activation then overwrites
            its input and the real forward applies it a second time, which
            changes the network's computation for non-idempotent in-place
            activations (``SiLU``/``Hardswish(inplace=True)`` in EfficientNet
            and MobileNetV3). ``False`` reproduces that.
        replicate_dict_aliasing: reproduce the published aliasing of the
            per-module result dict described above.

    Returns:
        ``{key: {metric: [float, ...], ...}, ...}``.
    """
    _check_dtype(dtype)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in DEFAULT_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {DEFAULT_METRICS}")

    result: dict[str, dict[str, list]] = {}
    handles = []

    def make_hook(store: dict[str, list]):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            _record(
                store,
                module,
                args[0],
                metrics=metrics,
                dtype=dtype,
                keep_features=keep_features,
                clone_input=clone_input,
            )

        return hook

    was_training = model.training
    try:
        for name, module in model.named_modules():
            keys = _activation_keys(name, module)
            for key in keys:
                result[key] = {metric: [] for metric in metrics}
                if keep_features:
                    result[key]["input2d"] = []
                    result[key]["output2d"] = []
            for key in keys:
                store = result[keys[-1]] if replicate_dict_aliasing else result[key]
                handles.append(module.register_forward_pre_hook(make_hook(store)))
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return result
