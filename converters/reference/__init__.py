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

from converters.reference._common import (
    ACTIVATION_CLASS_NAMES,
    DEFAULT_METRICS,
    EPS,
    SPARSITY_THRESHOLD,
)
from converters.reference.hooks import reduce_activation, reference_signature
from converters.reference.metrics import entropy_batch, linear_cka, norm_diff, r2_score, sparsity
from converters.reference.score import (
    AffineOTDetails,
    ot_map,
    rho_aff,
    rho_aff_details,
    scipy_sqrtm,
    torch_sqrtm,
)
from converters.weights import model_info as model_meta  # the published metaInfo

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
