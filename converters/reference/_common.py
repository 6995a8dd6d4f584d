"""Constants and dtype helpers shared by the reference modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Ridge added to every covariance, and the scale of the "constant output" test.
EPS = 1e-6

#: Entries with ``|v| <= SPARSITY_THRESHOLD`` count as zero in :func:`sparsity`.
SPARSITY_THRESHOLD = 1e-3

#: The ``ot.emd2`` iteration cap used by the published code.
_NUM_ITER_MAX = 10_000_000

#: The activation classes the published code hooks, in its order. The published
#: code derives this list from ``torch.nn.modules.activation.__dict__`` (dropping
#: the first three entries: two imported names and ``Threshold``); the result is
#: the list below plus ``MultiheadAttention``, which is skipped by name anyway.
ACTIVATION_CLASS_NAMES: tuple[str, ...] = (
    "ReLU",
    "RReLU",
    "Hardtanh",
    "ReLU6",
    "Sigmoid",
    "Hardsigmoid",
    "Tanh",
    "SiLU",
    "Mish",
    "Hardswish",
    "ELU",
    "CELU",
    "SELU",
    "GLU",
    "GELU",
    "Hardshrink",
    "LeakyReLU",
    "LogSigmoid",
    "Softplus",
    "Softshrink",
    "PReLU",
    "Softsign",
    "Tanhshrink",
    "Softmin",
    "Softmax",
    "Softmax2d",
    "LogSoftmax",
)

#: Metrics recorded by :func:`reference_signature`, with the published names.
DEFAULT_METRICS: tuple[str, ...] = (
    "aff_score",
    "aff_score_corrected",
    "cka_score",
    "ent_before",
    "ent_after",
    "sparsity_before",
    "sparsity_after",
    "norm_diff",
    "r2_score",
)

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """Converts a torch tensor or array-like to ``dtype`` (keeping its device)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)
