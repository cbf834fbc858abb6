"""mpitrain: train scikit-learn models on HDF5 data split across MPI ranks.

Importing this package is cheap: it neither initialises MPI nor imports
scikit-learn.  The public names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LinearRegression": "mpitrain.linear_model",
    "Ridge": "mpitrain.linear_model",
    "PolynomialRegression": "mpitrain.linear_model",
    "Lasso": "mpitrain.linear_model",
    "ElasticNet": "mpitrain.linear_model",
    "SVC": "mpitrain.svm",
    "SVR": "mpitrain.svm",
    "SGDRegressor": "mpitrain.linear_model",
    "SGDClassifier": "mpitrain.linear_model",
    "LogisticRegression": "mpitrain.linear_model",
    "LinearSVC": "mpitrain.linear_model",
    "MLPClassifier": "mpitrain.neural_network",
    "MLPRegressor": "mpitrain.neural_network",
    "RandomForestClassifier": "mpitrain.ensemble",
    "RandomForestRegressor": "mpitrain.ensemble",
    "ExtraTreesClassifier": "mpitrain.ensemble",
    "ExtraTreesRegressor": "mpitrain.ensemble",
    "PCA": "mpitrain.decomposition",
    "KMeans": "mpitrain.cluster",
    "StandardScaler": "mpitrain.preprocessing",
    "make_pipeline": "mpitrain.preprocessing",
    "check_pipeline": "mpitrain.preprocessing",
    "SimpleImputer": "mpitrain.preprocessing",
    "QuantileClipper": "mpitrain.preprocessing",
    "drop_missing": "mpitrain.preprocessing",
    "describe_file": "mpitrain.describe",
    "describe_arrays": "mpitrain.describe",
    "evaluate_estimator": "mpitrain.metrics",
    "cross_validate": "mpitrain.model_selection",
    "train_test_split": "mpitrain.model_selection",
    "read_rows": "mpitrain.data",
    "row_range": "mpitrain.data",
    "make_data": "mpitrain.datasets",
    "MpitrainError": "mpitrain.errors",
    "DistributedError": "mpitrain.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpitrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
