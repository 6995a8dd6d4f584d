"""Linear algebra for the affinity score: covariances and PSD matrix roots."""

from affjax.math import costs, covariance, matrix_square_root

__all__ = ["costs", "covariance", "matrix_square_root"]
