"""Linear algebra for the affinity score: covariances and PSD matrix roots."""

from affjax.math import covariance, matrix_square_root

__all__ = ["covariance", "matrix_square_root"]
