"""affjax: non-linearity signatures of deep networks in JAX/Flax.

The affinity score (CVPR 2025, "From Alexnet to Transformers: Measuring the
Non-linearity of Deep Neural Networks with Affine Optimal Transport") of every
activation call of a model, exact and jit/vmap-able.

Importing affjax never changes JAX's global configuration; float64 work runs
inside a scoped ``jax.enable_x64``.
"""

from affjax.score import AffinityResult, affinity_score
from affjax.signature import METRICS, Signature, SignatureError, signature
from affjax.sites import site

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "AffinityResult",
    "Signature",
    "SignatureError",
    "affinity_score",
    "signature",
    "site",
]
