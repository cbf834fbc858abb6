"""Neural networks across MPI ranks: scikit-learn's multilayer perceptrons, exact or averaged."""

from mpitrain.neural_network._multilayer_perceptron import (
    MLPClassifier,
    MLPRegressor,
    batch_objective,
    layer_units,
    local_sums,
    pack,
    squared_weight_norm,
    unpack_into,
)

__all__ = [
    "MLPClassifier",
    "MLPRegressor",
    "batch_objective",
    "layer_units",
    "local_sums",
    "pack",
    "squared_weight_norm",
    "unpack_into",
]
