"""Ensembles across MPI ranks: forests merged from every rank's trees, boosting, voting and stacking."""

from mpitrain.ensemble._boosting import (
    TRACKER_HOST_VARIABLE,
    BoostingParameterError,
    XGBClassifier,
    XGBRegressor,
    booster_bytes,
    booster_from_bytes,
    tracker_host,
)
from mpitrain.ensemble._forest import (
    MAX_SEED,
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    local_max_samples,
    merged_forest_bytes,
    tree_seeds,
    trees_per_rank,
)
from mpitrain.ensemble._stacking import StackingClassifier, StackingRegressor
from mpitrain.ensemble._voting import VotingClassifier, VotingRegressor

__all__: list[str] = [
    "XGBClassifier",
    "XGBRegressor",
    "BoostingParameterError",
    "TRACKER_HOST_VARIABLE",
    "tracker_host",
    "booster_bytes",
    "booster_from_bytes",
    "MAX_SEED",
    "trees_per_rank",
    "tree_seeds",
    "local_max_samples",
    "merged_forest_bytes",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "VotingClassifier",
    "VotingRegressor",
    "StackingClassifier",
    "StackingRegressor",
]
