"""The published side metrics in PyTorch: CKA, entropy, sparsity, norm_diff, R^2."""

from __future__ import annotations

import math
from typing import Any

import torch
from sklearn.linear_model import LinearRegression

from converters.reference._common import SPARSITY_THRESHOLD, _as_tensor, _check_dtype

# ---------------------------------------------------------------------------
# Side metrics
# ---------------------------------------------------------------------------


def _centering(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return h @ k @ h


def _linear_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sum(_centering(x @ x.T) * _centering(y @ y.T))


def linear_cka(x: Any, y: Any, *, dtype: torch.dtype = torch.float32) -> float:
    """Linear CKA between ``[n, d_x]`` and ``[n, d_y]`` representations.

    ``HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y))`` with
    ``HSIC(x, y) = sum(H x x^T H * H y y^T H)`` and ``H = I - 1/n``.

    Args:
        x: ``[n, d_x]`` representation.
        y: ``[n, d_y]`` representation.
        dtype: working dtype.

    Returns:
        The CKA as a Python float.
    """
    _check_dtype(dtype)
    x = _as_tensor(x, dtype)
    y = _as_tensor(y, dtype)
    hsic = _linear_hsic(x, y)
    var_x = torch.sqrt(_linear_hsic(x, x))
    var_y = torch.sqrt(_linear_hsic(y, y))
    return float(hsic / (var_x * var_y))


def entropy_batch(x: Any, *, dtype: torch.dtype = torch.float32) -> float:
    """Mean over samples of the histogram entropy of each row (published).

    Each row of ``d`` values is binned by ``torch.histc`` into ``d`` bins over
    ``[row.min(), row.max()]``; with ``p`` the bin frequencies the row entropy
    is ``-(sum_{p>0} p log p) + log(d)`` (published:
    ``-(sum p log p + log(1/bins))``).

    A constant row (``min == max``) is binned by ``histc`` over
    ``[v - 1, v + 1]``: all ``d`` values fall in bin ``d // 2``, so the row
    entropy is ``log(d)``. A row of ``d`` distinct equally spaced values puts
    one value in each bin: ``2 log(d)``.

    Args:
        x: ``[n, d]`` reduced activations.
        dtype: working dtype.

    Returns:
        The mean row entropy as a Python float.
    """
    _check_dtype(dtype)
    x = _as_tensor(x, dtype)
    bins = x.shape[1]
    if dtype == torch.float32:
        # Published: log(1 / torch.tensor(bins)), i.e. computed in float32.
        log_bins = -torch.log(1 / torch.tensor(bins))
    else:
        log_bins = torch.tensor(math.log(bins), dtype=dtype)
    total = 0
    for row in x:
        counts = torch.histc(row, bins=bins, min=float(row.min()), max=float(row.max()))
        p = counts / torch.sum(counts)
        p = p[p > 0]
        total = total + (-torch.sum(p * torch.log(p)) + log_bins.to(p.device))
    return float(total / x.shape[0])


def sparsity(
    t: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    threshold: float = SPARSITY_THRESHOLD,
    split: int = 64,
) -> float:
    """Fraction of entries of the UNREDUCED activation with ``|v| <= threshold``.

    ``1 - count(|v| > threshold) / numel``. The comparison is made in the
    tensor's own dtype, as in the published code (torch rounds the Python
    threshold to the tensor's dtype: a float32 entry equal to
    ``float32(1e-3)`` is not counted), so both modes count the same entries.
    The published code accumulates the count in chunks of ``split`` samples
    with float32 sums, reproduced in float32 mode (counts above ``2**24`` may
    round); in float64 mode the count is an exact integer.

    Args:
        t: Activation tensor of any shape (samples first).
        dtype: working dtype.
        threshold: magnitude at or below which an entry counts as zero.
        split: chunk size along the first dimension.

    Returns:
        The sparsity as a Python float.
    """
    _check_dtype(dtype)
    t = t.detach()
    numel = t.numel()
    if dtype == torch.float32:
        nnz = 0
        for i in range(0, t.size(0), split):
            batch = t[i : i + split]
            nnz = nnz + torch.sum((batch.abs() > threshold).float())
        return float(1 - (nnz / numel))
    count = 0
    for i in range(0, t.size(0), split):
        count += int((t[i : i + split].abs() > threshold).sum())
    return 1.0 - count / numel


def norm_diff(x: Any, y: Any, *, dtype: torch.dtype = torch.float32) -> float:
    """Frobenius norm ``||x - y||`` of reduced inputs and outputs.

    Args:
        x: ``[n, d]`` reduced inputs.
        y: ``[n, d]`` reduced outputs.
        dtype: working dtype.

    Returns:
        The norm as a Python float.
    """
    _check_dtype(dtype)
    return float(torch.linalg.norm(_as_tensor(x, dtype) - _as_tensor(y, dtype)))


def r2_score(x: Any, y: Any, *, dtype: torch.dtype = torch.float32) -> float:
    """Coefficient of determination of the least-squares affine fit ``x -> y``.

    ``LinearRegression().fit(x, y).score(x, y)`` from scikit-learn, averaged
    uniformly over output columns. The published code passes the float32
    NumPy arrays of the activations, on which scikit-learn fits in float32;
    in float64 mode the arrays are float64.

    Args:
        x: ``[n, d_x]`` reduced inputs.
        y: ``[n, d_y]`` reduced outputs.
        dtype: working dtype.

    Returns:
        The R^2 as a Python float.
    """
    _check_dtype(dtype)
    x_np = _as_tensor(x, dtype).cpu().numpy()
    y_np = _as_tensor(y, dtype).cpu().numpy()
    return float(LinearRegression().fit(x_np, y_np).score(x_np, y_np))
