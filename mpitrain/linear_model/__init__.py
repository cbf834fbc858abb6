"""Linear models trained across MPI ranks.

Exact where the model allows it (reduced sufficient statistics, or one
reduction per L-BFGS evaluation), per-rank fits averaged where asked.
"""

from mpitrain.linear_model._averaging import (
    fit_average,
    rescaled_params,
    weighted_average,
)
from mpitrain.linear_model._classifiers import (
    LinearSVC,
    LogisticRegression,
    binomial_loss_gradient,
    multinomial_loss_gradient,
    squared_hinge_loss_gradient,
)
from mpitrain.linear_model._least_squares import (
    ElasticNet,
    Lasso,
    LinearRegression,
    PolynomialRegression,
    Ridge,
)
from mpitrain.linear_model._sgd import (
    SGDClassifier,
    SGDRegressor,
)

__all__ = [
    "rescaled_params",
    "weighted_average",
    "fit_average",
    "binomial_loss_gradient",
    "multinomial_loss_gradient",
    "squared_hinge_loss_gradient",
    "LogisticRegression",
    "LinearSVC",
    "LinearRegression",
    "Ridge",
    "PolynomialRegression",
    "Lasso",
    "ElasticNet",
    "SGDRegressor",
    "SGDClassifier",
]
