"""Splits that do not depend on the rank count, and cross-validation across ranks."""

from mpitrain.model_selection._linear_grid import (
    LINEAR_GRID_MODELS,
    LINEAR_GRID_SCORINGS,
    fit_from_statistics,
    linear_grid_scores,
)
from mpitrain.model_selection._search import (
    SEARCH_MODES,
    SEARCH_SCORINGS,
    GridSearchCV,
    RandomizedSearchCV,
    SearchStopped,
    balance_tasks,
    search_results,
)
from mpitrain.model_selection._split import (
    GATHER_KEYS,
    SCORINGS,
    cross_validate,
    fold_ids,
    fold_sizes,
    global_fold_ids,
    global_row_offset,
    global_test_mask,
    row_hash,
    split_sizes,
    train_test_split,
    train_test_split_mask,
)

__all__ = [
    "GATHER_KEYS",
    "row_hash",
    "split_sizes",
    "fold_sizes",
    "global_test_mask",
    "global_fold_ids",
    "global_row_offset",
    "train_test_split_mask",
    "fold_ids",
    "train_test_split",
    "SCORINGS",
    "cross_validate",
    "LINEAR_GRID_MODELS",
    "LINEAR_GRID_SCORINGS",
    "linear_grid_scores",
    "fit_from_statistics",
    "GridSearchCV",
    "RandomizedSearchCV",
    "SEARCH_MODES",
    "SEARCH_SCORINGS",
    "SearchStopped",
    "balance_tasks",
    "search_results",
]
