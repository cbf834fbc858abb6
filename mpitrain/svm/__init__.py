"""Support vector machines across MPI ranks: kernel SVMs by cascade, and the linear SVM."""

from mpitrain.linear_model import LinearSVC
from mpitrain.svm._cascade import (
    PRIVACY_NOTE,
    SVC,
    SVR,
    WARM_MIN_ROWS,
    cascade_tree,
    decision_values,
    dedupe_by_id,
    plain_sklearn_model,
    pooled_entry_variance,
    svc_dual_objective,
    svc_violators,
    svr_dual_objective,
    svr_violators,
)

__all__ = [
    "PRIVACY_NOTE",
    "cascade_tree",
    "dedupe_by_id",
    "svc_violators",
    "svr_violators",
    "decision_values",
    "svc_dual_objective",
    "svr_dual_objective",
    "pooled_entry_variance",
    "plain_sklearn_model",
    "LinearSVC",
    "SVC",
    "SVR",
    "WARM_MIN_ROWS",
]
