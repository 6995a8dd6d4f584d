r"""PyTorch re-implementation of the published affinity-score method.

This is the baseline that parity tests and benchmarks compare ``affjax``
against. It follows the code released with *"From Alexnet to Transformers:
Measuring the Non-linearity of Deep Neural Networks with Affine Optimal
Transport"* (CVPR 2025) operation by operation: the same covariance
estimators and ridge, the same eigen-decomposition square root (including its
treatment of non-positive eigenvalues), the same ``torch.pinverse``, the same
``torch.cdist`` cost and the same exact ``ot.emd2`` solve.

Two precisions are offered through a ``dtype`` argument:

* ``torch.float32`` (default) is the published behaviour: inputs and all
  intermediate tensors are float32, except inside the matrix square root,
  which works in float64 and casts its result back to float32.
* ``torch.float64`` runs everything in float64. This is the parity baseline,
  because the float32 path is numerically unstable when the feature dimension
  ``d`` is close to or larger than the number of samples ``n`` (the covariances
  are then rank deficient and only the ``1e-6`` ridge keeps them invertible).

The API is sample-first: every 2-D input is ``[n, d]``. The published code
takes ``[d, n]``; :func:`rho_aff_details` transposes internally and then uses
the published layout so that float32 rounding follows the same operations.

Deliberate departures from the published code (all documented where they
occur):

* :func:`torch_sqrtm` skips the published "duplicate nudging" branch (see its
  docstring: that branch cannot run successfully in the published code).
* :func:`reference_signature` clones the activation input before calling the
  module (the published hook did not, which corrupts the forward pass of
  in-place, non-idempotent activations); ``clone_input=False`` restores the
  published behaviour.
* :func:`reference_signature` records a module matching several activation
  classes (``ReLU6`` is a subclass of ``Hardtanh``) under each key
  independently; ``replicate_dict_aliasing=True`` restores the published
  aliasing, where every entry lands in the last key.
* Errors propagate instead of being swallowed and recorded as ``0``; nothing
  is printed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ot
import scipy.linalg
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LinearRegression

__all__ = [
    "ACTIVATION_CLASS_NAMES",
    "DEFAULT_METRICS",
    "EPS",
    "SPARSITY_THRESHOLD",
    "AffineOTDetails",
    "entropy_batch",
    "linear_cka",
    "model_meta",
    "norm_diff",
    "ot_map",
    "r2_score",
    "reduce_activation",
    "reference_signature",
    "rho_aff",
    "rho_aff_details",
    "scipy_sqrtm",
    "sparsity",
    "torch_sqrtm",
]

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


# ---------------------------------------------------------------------------
# Matrix square roots and the Gaussian OT map
# ---------------------------------------------------------------------------


def torch_sqrtm(a: torch.Tensor, *, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigen-decomposition (published).

    The decomposition always runs in float64 (``torch.linalg.eigh``), whatever
    the input dtype; the result is cast to ``out_dtype`` (float32 in the
    published code).

    Rounding can make eigenvalues of a PSD matrix zero or slightly negative,
    and ``sqrt`` would then return NaN. The published code replaces the ``k``
    non-positive eigenvalues by ``linspace(1e-7, 1e-6, k)``: small, positive
    and distinct. Because ``eigh`` sorts eigenvalues in ascending order, the
    non-positive ones are the first ``k``, so concatenating the constants in
    front of the positive eigenvalues keeps each value aligned with its
    eigenvector. The floors stay of the order of the ``1e-6`` ridge, so the
    ``pinverse`` that follows is not dominated by them.

    The published code then "nudges" duplicate values when the replacement
    creates one (a constant equal to a positive eigenvalue). That branch is
    skipped here: duplicates are harmless for ``V diag(sqrt(w)) V^T``, and the
    published branch cannot complete anyway (it indexes past the end for a
    duplicate in last position and rebuilds the values as a float32 CPU
    tensor, which ``matmul`` with the float64 eigenvectors rejects).

    Args:
        a: Symmetric ``[d, d]`` matrix.
        out_dtype: dtype of the returned matrix.

    Returns:
        The ``[d, d]`` symmetric square root, in ``out_dtype``.
    """
    a64 = a.to(torch.float64)
    e_vals, e_vecs = torch.linalg.eigh(a64)
    positive = e_vals > 0
    k = int((~positive).sum())
    if k:
        # The published code builds the floors with torch's default dtype
        # (float32); in float64 mode they are built in float64.
        floor_dtype = torch.float32 if out_dtype == torch.float32 else torch.float64
        floors = torch.linspace(1e-7, 1e-6, k, dtype=floor_dtype, device=a.device)
        e_vals = torch.cat((floors.to(torch.float64), e_vals[positive]))
    root = e_vecs @ torch.diag(torch.sqrt(e_vals)) @ e_vecs.T
    return root.to(out_dtype)


def scipy_sqrtm(a: torch.Tensor, *, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Square root via ``scipy.linalg.sqrtm`` (the published ``use_scipy`` path).

    The published option is off by default and was never reachable from its
    entry point; it is offered for comparison. The computation runs in float64
    on the CPU, the (rounding-level) imaginary part is dropped, and the result
    is cast to ``out_dtype`` on the device of ``a``.

    Args:
        a: Symmetric ``[d, d]`` matrix.
        out_dtype: dtype of the returned matrix.

    Returns:
        The ``[d, d]`` principal square root, in ``out_dtype``.
    """
    root = scipy.linalg.sqrtm(a.detach().cpu().to(torch.float64).numpy())
    root = np.real(root)
    return torch.as_tensor(root, dtype=out_dtype, device=a.device)


def ot_map(
    cov_x: torch.Tensor,
    cov_y: torch.Tensor,
    *,
    sqrtm: str = "torch",
    eps: float = EPS,
) -> torch.Tensor:
    r"""Linear part of the OT map between ``N(., cov_x)`` and ``N(., cov_y)``.

    ``A = S pinv(sqrt(S cov_x S)) S`` with ``S = sqrt(cov_y)``, computed in the
    dtype of ``cov_y``. When ``tr(cov_y) <= 2 * eps * d`` the output is (up to
    the ridge) constant, and the published code returns ``A = 0``: every input
    is then mapped to the output mean.

    Args:
        cov_x: ``[d, d]`` input covariance (ridge included).
        cov_y: ``[d, d]`` output covariance (ridge included).
        sqrtm: ``"torch"`` (published default, :func:`torch_sqrtm`) or
            ``"scipy"`` (:func:`scipy_sqrtm`).
        eps: the ridge; sets the "constant output" threshold.

    Returns:
        The ``[d, d]`` matrix ``A``.
    """
    if sqrtm == "torch":
        root = torch_sqrtm
    elif sqrtm == "scipy":
        root = scipy_sqrtm
    else:
        raise ValueError(f"sqrtm must be 'torch' or 'scipy', got {sqrtm!r}")
    dtype = cov_y.dtype
    d = cov_y.shape[0]
    if torch.trace(cov_y) > 2 * eps * d:
        s = root(cov_y, out_dtype=dtype)
        t = s @ cov_x @ s
        r = root(t, out_dtype=dtype)
        return torch.real(s @ torch.pinverse(r) @ s)
    return torch.zeros_like(cov_y)


# ---------------------------------------------------------------------------
# Affinity score
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AffineOTDetails:
    """Intermediate quantities of :func:`rho_aff_details` (all in the working dtype).

    Attributes:
        score: ``1 - sqrt(ot_cost / upper_bound)`` as a Python float.
        a: ``[d, d]`` linear part of the map (zeros when ``degenerate``).
        mean_x: ``[d]`` input mean.
        mean_y: ``[d]`` output mean (the translation of the map).
        cov_x: ``[d, d]`` input covariance, ridge included.
        cov_y: ``[d, d]`` output covariance, ridge included.
        mapped: ``[n, d]`` mapped inputs ``A (x_i - mean_x) + mean_y``.
        ot_cost: exact squared 2-Wasserstein distance between ``mapped`` and ``y``.
        upper_bound: ``2 tr(cov_y)``.
        degenerate: True when ``tr(cov_y) <= 2 eps d`` and ``A = 0``.
    """

    score: float
    a: torch.Tensor
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    cov_x: torch.Tensor
    cov_y: torch.Tensor
    mapped: torch.Tensor
    ot_cost: torch.Tensor
    upper_bound: torch.Tensor
    degenerate: bool


def _covariance(
    x_dn: torch.Tensor, *, correct_cov: bool, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Covariance of a ``[d, n]`` matrix plus ``eps * I``, as in the published code."""
    d = x_dn.shape[0]
    eye = torch.eye(d, dtype=dtype, device=x_dn.device)
    if correct_cov:
        # Ledoit-Wolf (biased, divides by n). sklearn keeps float32 inputs in
        # float32, so the float32 path stays float32 as in the published code;
        # the explicit cast guards against NumPy promotion rules changing that.
        # store_precision=False only skips the (unused) pseudo-inverse that the
        # published default computes; covariance_ is the same.
        cov = LedoitWolf(store_precision=False).fit(x_dn.T.cpu().numpy()).covariance_
        cov = torch.as_tensor(cov, device=x_dn.device).to(dtype)
    else:
        # torch.cov of a single variable is 0-d; the reshape keeps [d, d].
        cov = torch.cov(x_dn).reshape(d, d)
    return cov + eps * eye


def rho_aff_details(
    x: Any,
    y: Any,
    *,
    correct_cov: bool = False,
    dtype: torch.dtype = torch.float32,
    sqrtm: str = "torch",
    eps: float = EPS,
) -> AffineOTDetails:
    """Affinity score of ``x -> y`` with its intermediate quantities.

    Steps (published ``rho_aff``): means and covariances (``torch.cov`` or
    Ledoit-Wolf, plus ``eps * I``); the Gaussian OT map ``A`` (:func:`ot_map`);
    the mapped inputs ``t_i = A (x_i - m_x) + m_y``; the exact optimal
    transport cost between the uniform empirical measures on ``t`` and ``y``
    with squared Euclidean cost (``ot.emd2``); finally
    ``1 - sqrt(cost / (2 tr(cov_y)))``.

    Args:
        x: ``[n, d]`` inputs (torch tensor or array-like).
        y: ``[n, d]`` outputs.
        correct_cov: use Ledoit-Wolf shrinkage covariances
            (``aff_score_corrected``).
        dtype: ``torch.float32`` (published) or ``torch.float64``.
        sqrtm: ``"torch"`` (published default) or ``"scipy"``.
        eps: covariance ridge.

    Returns:
        An :class:`AffineOTDetails`.
    """
    _check_dtype(dtype)
    x = _as_tensor(x, dtype)
    y = _as_tensor(y, dtype)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be [n, d] with the same n, got {x.shape}, {y.shape}")
    # Published layout: features first, samples second.
    x_dn, y_dn = x.T, y.T
    m_x = x_dn.mean(1).reshape(-1, 1)
    m_y = y_dn.mean(1).reshape(-1, 1)
    cov_x = _covariance(x_dn, correct_cov=correct_cov, eps=eps, dtype=dtype)
    cov_y = _covariance(y_dn, correct_cov=correct_cov, eps=eps, dtype=dtype)
    degenerate = not bool(torch.trace(cov_y) > 2 * eps * cov_y.shape[0])
    a = ot_map(cov_x, cov_y, sqrtm=sqrtm, eps=eps)
    mapped_dn = a @ (x_dn - m_x) + m_y

    n_x, n_y = x_dn.shape[1], y_dn.shape[1]
    cost = torch.cdist(mapped_dn.T, y_dn.T) ** 2
    mu_x = torch.ones(n_x, dtype=dtype, device=x.device) / n_x
    mu_y = torch.ones(n_y, dtype=dtype, device=y.device) / n_y
    # emd2 solves in float64 and returns a tensor of the cost matrix's dtype.
    ot_cost = ot.emd2(mu_x, mu_y, cost, numItermax=_NUM_ITER_MAX)
    upper_bound = 2 * torch.trace(cov_y)
    score = 1 - torch.sqrt(ot_cost / upper_bound)
    return AffineOTDetails(
        score=float(score),
        a=a,
        mean_x=m_x.reshape(-1),
        mean_y=m_y.reshape(-1),
        cov_x=cov_x,
        cov_y=cov_y,
        mapped=mapped_dn.T,
        ot_cost=ot_cost,
        upper_bound=upper_bound,
        degenerate=degenerate,
    )


def rho_aff(
    x: Any,
    y: Any,
    *,
    correct_cov: bool = False,
    dtype: torch.dtype = torch.float32,
    sqrtm: str = "torch",
    eps: float = EPS,
) -> float:
    """Affinity score of ``x -> y`` (1: PSD-affine; lower: more non-linear).

    See :func:`rho_aff_details` for the steps and arguments.

    Note:
        For a constant ``y`` the map is ``A = 0``, every ``t_i`` is ``m_y``,
        the transport cost is (up to the rounding of ``m_y``) zero and the
        normaliser ``2 tr(cov_y) = 2 d eps`` is positive thanks to the ridge,
        so the score is 1 (not NaN).

    Returns:
        The score as a Python float.
    """
    return rho_aff_details(x, y, correct_cov=correct_cov, dtype=dtype, sqrtm=sqrtm, eps=eps).score


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


def model_meta(model: torch.nn.Module, weights: Any = None) -> dict[str, Any]:
    """Model metadata recorded next to signatures (published ``metaInfo``).

    Args:
        model: The torch model.
        weights: Optional torchvision weights enum member; its ImageNet-1K
            ``acc@1`` / ``acc@5`` are copied.

    Returns:
        ``acc@1`` and ``acc@5`` (when ``weights`` is given), ``total_params``,
        ``trainable_total_params`` and ``depth`` (number of named modules,
        the root included).
    """
    meta: dict[str, Any] = {}
    if weights is not None:
        imagenet = weights.meta["_metrics"]["ImageNet-1K"]
        for metric in ("acc@1", "acc@5"):
            meta[metric] = imagenet[metric]
    meta["total_params"] = sum(p.numel() for p in model.parameters())
    meta["trainable_total_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta["depth"] = len(list(model.named_modules()))
    return meta
