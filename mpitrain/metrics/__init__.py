"""Exact metrics across ranks: every function reduces sufficient statistics of its rows."""

from mpitrain.metrics._metrics import (
    ROC_MAX_POINTS,
    accuracy,
    agree_labels,
    binary_score_histograms,
    classification_scores,
    evaluate_estimator,
    predict_local,
    regression_histograms,
    regression_scores,
    roc_auc,
    roc_auc_ovr,
    roc_curve,
)

__all__ = [
    "ROC_MAX_POINTS",
    "regression_scores",
    "accuracy",
    "regression_histograms",
    "agree_labels",
    "classification_scores",
    "roc_curve",
    "roc_auc",
    "roc_auc_ovr",
    "binary_score_histograms",
    "predict_local",
    "evaluate_estimator",
]
