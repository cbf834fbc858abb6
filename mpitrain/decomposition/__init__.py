"""Decomposition across ranks: PCA with scikit-learn's answer on all rows (covariance or TSQR)."""

from mpitrain.decomposition._pca import (
    PCA,
    PCASpectrum,
    pca_statistics,
    spectrum_from_scatter,
)

__all__ = ["PCA", "PCASpectrum", "pca_statistics", "spectrum_from_scatter"]
