"""Preprocessing with global statistics: scaling, imputation, clipping, missing rows, safe pipelines."""

from mpitrain.preprocessing._imputation import (
    DroppedRows,
    QuantileClipper,
    SimpleImputer,
    drop_missing,
    missing_row_mask,
)
from mpitrain.preprocessing._scaler import (
    PolynomialFeatures,
    StandardScaler,
    check_pipeline,
    make_pipeline,
)

__all__ = [
    "SimpleImputer",
    "QuantileClipper",
    "missing_row_mask",
    "DroppedRows",
    "drop_missing",
    "StandardScaler",
    "PolynomialFeatures",
    "check_pipeline",
    "make_pipeline",
]
