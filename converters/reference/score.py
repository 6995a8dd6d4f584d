"""The published affinity score in PyTorch: sqrtm, the Gaussian OT map, ``rho_aff``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import ot
import scipy.linalg
import torch
from sklearn.covariance import LedoitWolf

from converters.reference._common import _NUM_ITER_MAX, EPS, _as_tensor, _check_dtype

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
