"""Splits that do not depend on the rank count, and cross-validation across ranks."""

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
]
