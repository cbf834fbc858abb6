"""One validation path: the same bad input gives the same message from every family, on every rank.

Every estimator family (least squares, averaging, exact classifiers, SGD,
the SVM cascade, the scaler and the cleaning transformers) checks a rank's
rows through :mod:`mpitrain.utils.validation`; these tests feed each bad
input to all of them at 2 ranks, one of which holds no rows, and require
one message, identical on both ranks.  The expected texts are written out
here, not taken from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpitrain.testing import run_function

#: Rows of rank 0; rank 1 holds none.
N = 12

#: The prefix the agreement adds to an error found on rank 0's rows only.
ON_RANK_0 = "checking the input failed on rank 0 (of 2): "
ON_RANK_1 = "checking the input failed on rank 1 (of 2): "


def _family(kind: str, module: str, cls: str, **params):
    """``(kind, factory)``; the factory imports lazily (the parent never imports MPI)."""

    def make(comm):
        import importlib

        return getattr(importlib.import_module(module), cls)(comm=comm, **params)

    return kind, make


FAMILIES = {
    "LinearRegression": _family(
        "regressor", "mpitrain.linear_model", "LinearRegression"
    ),
    "Ridge": _family("regressor", "mpitrain.linear_model", "Ridge"),
    "Lasso": _family("regressor", "mpitrain.linear_model", "Lasso", alpha=0.01),
    "PolynomialRegression": _family(
        "regressor", "mpitrain.linear_model", "PolynomialRegression"
    ),
    "Ridge(average)": _family(
        "regressor", "mpitrain.linear_model", "Ridge", strategy="average"
    ),
    "SGDRegressor": _family("regressor_1d", "mpitrain.linear_model", "SGDRegressor"),
    "SVR": _family("regressor_1d", "mpitrain.svm", "SVR"),
    "LogisticRegression": _family(
        "classifier", "mpitrain.linear_model", "LogisticRegression"
    ),
    "LogisticRegression(average)": _family(
        "classifier", "mpitrain.linear_model", "LogisticRegression", strategy="average"
    ),
    "LinearSVC": _family("classifier", "mpitrain.linear_model", "LinearSVC"),
    "SGDClassifier": _family("classifier", "mpitrain.linear_model", "SGDClassifier"),
    "SVC": _family("classifier", "mpitrain.svm", "SVC"),
    "StandardScaler": _family(
        "weighted_transformer", "mpitrain.preprocessing", "StandardScaler"
    ),
    # With the indicator, so that inverse_transform works (scikit-learn's rule).
    "SimpleImputer": _family(
        "transformer", "mpitrain.preprocessing", "SimpleImputer", add_indicator=True
    ),
    "QuantileClipper": _family(
        "transformer", "mpitrain.preprocessing", "QuantileClipper"
    ),
}

ALL = {kind for kind, _ in FAMILIES.values()}
SUPERVISED = {"regressor", "regressor_1d", "classifier"}
WEIGHTED = SUPERVISED | {"weighted_transformer"}
REFUSES_NAN = SUPERVISED  # the transformers keep NaN (missing values)
ONE_TARGET = {"regressor_1d", "classifier"}  # least squares take several targets

WEIGHT_MESSAGE = "sample_weight must be finite and non-negative; it has "

# case: (families it applies to, expected type, expected message on both ranks)
CASES = {
    "negative weight": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_0 + WEIGHT_MESSAGE + "negative values",
    ),
    "NaN weight": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_0 + WEIGHT_MESSAGE + "NaN",
    ),
    "inf weight": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_0 + WEIGHT_MESSAGE + "infinity",
    ),
    "wrong weight length": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_0
        + f"sample_weight has shape ({N - 1},); expected ({N},): one weight per row of X",
    ),
    "2-D weights": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_0
        + f"sample_weight has shape ({N}, 2); expected ({N},): one weight per row of X",
    ),
    "weights on the empty rank": (
        WEIGHTED,
        "DistributedValueError",
        ON_RANK_1
        + "sample_weight has shape (2,); expected (0,): one weight per row of X",
    ),
    "NaN in X": (
        REFUSES_NAN,
        "DistributedValueError",
        ON_RANK_0 + "Input X contains NaN.",
    ),
    "inf in X": (
        ALL,
        "DistributedValueError",
        ON_RANK_0
        + "Input X contains infinity or a value too large for dtype('float64').",
    ),
    "wrong y length": (
        SUPERVISED,
        "DistributedValueError",
        ON_RANK_0
        + f"Found input variables with inconsistent numbers of samples: [{N}, {N - 1}]",
    ),
    "y on the empty rank": (
        SUPERVISED,
        "DistributedValueError",
        ON_RANK_1
        + "Found input variables with inconsistent numbers of samples: [0, 3]",
    ),
    "2-D y": (
        ONE_TARGET,
        "DistributedValueError",
        ON_RANK_0 + f"y should be a 1d array, got an array of shape ({N}, 2) instead.",
    ),
    "NaN in y": (
        SUPERVISED,
        "DistributedValueError",
        ON_RANK_0 + "Input y contains NaN.",
    ),
    "weights on one rank only": (
        WEIGHTED,
        "ValueError",
        "sample_weight was given on rank 0 of 2 only; give it on every rank "
        "(an empty array on a rank without rows) or on none",
    ),
    "weights sum to zero": (
        WEIGHTED,
        "ValueError",
        "the sample weights of all rows sum to zero",
    ),
    "no rows anywhere": (
        ALL,
        "ValueError",
        "no rows to fit: all 2 ranks have 0 samples",
    ),
}


def _rows(case: str, kind: str, rank: int):
    """This rank's (X, y, sample_weight) for one case: rank 0 holds N rows, rank 1 none."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 3))
    y = (X[:, 0] > 0).astype(float) if kind == "classifier" else X @ [1.0, 2.0, 3.0]
    w = np.ones(N)
    if rank == 1 or case == "no rows anywhere":
        X, y, w = X[:0], y[:0], w[:0]
    if rank == 0:
        if case == "negative weight":
            w[3] = -1.0
        elif case == "NaN weight":
            w[3] = np.nan
        elif case == "inf weight":
            w[3] = np.inf
        elif case == "wrong weight length":
            w = w[:-1]
        elif case == "2-D weights":
            w = np.column_stack([w, w])
        elif case == "NaN in X":
            X[5, 1] = np.nan
        elif case == "inf in X":
            X[5, 1] = np.inf
        elif case == "wrong y length":
            y = y[:-1]
        elif case == "2-D y":
            y = np.column_stack([y, y])
        elif case == "NaN in y":
            y[2] = np.nan
        elif case == "weights sum to zero":
            w = np.zeros(N)
    elif case == "weights on the empty rank":
        w = np.ones(2)
    elif case == "y on the empty rank":
        y = np.ones(3)
    elif case == "weights on one rank only":
        w = None
    return X, y, w


def _bad_inputs_body(comm):
    import warnings

    outcomes = {}
    for case, (kinds, _, _) in CASES.items():
        for name, (kind, make) in FAMILIES.items():
            if kind not in kinds:
                continue
            X, y, w = _rows(case, kind, comm.Get_rank())
            kwargs = {"sample_weight": w} if kind in WEIGHTED else {}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if kind in SUPERVISED:
                        make(comm).fit(X, y, **kwargs)
                    else:
                        make(comm).fit(X, **kwargs)
                outcomes[case, name] = None
            except Exception as exc:
                outcomes[case, name] = (type(exc).__name__, str(exc))
    return outcomes


@pytest.mark.mpi(ranks=[2])
def test_each_bad_input_gives_one_message_from_every_family(mpi_ranks):
    per_rank = run_function(_bad_inputs_body, mpi_ranks)
    # Every rank raised exactly what rank 0 raised (nobody hung, nobody passed).
    assert per_rank[1] == per_rank[0]
    outcomes = per_rank[0]
    for case, (kinds, kind_name, message) in CASES.items():
        families = [n for n, (k, _) in FAMILIES.items() if k in kinds]
        assert families, case
        for name in families:
            assert outcomes[case, name] == (kind_name, message), (case, name)


def test_case_table_covers_every_family():
    # Each family is exercised by the weight, X and (if supervised) y cases.
    for kind in ALL:
        applicable = [case for case, (ks, _, _) in CASES.items() if kind in ks]
        assert "inf in X" in applicable and "no rows anywhere" in applicable
        if kind in WEIGHTED:
            assert "negative weight" in applicable and "NaN weight" in applicable
        if kind in SUPERVISED:
            assert "wrong y length" in applicable


# ------------------------------------------------ prediction forwarded once

#: The methods each family has, as its scikit-learn estimator has them.
HAS = {
    "regressor": {"predict"},
    "regressor_1d": {"predict"},
    "LogisticRegression": {
        "predict",
        "predict_proba",
        "predict_log_proba",
        "decision_function",
    },
    "LinearSVC": {"predict", "decision_function"},
    "SGDClassifier": {"predict", "decision_function"},  # hinge loss: no probabilities
    "SVC": {"predict", "decision_function"},  # probability=False
    "StandardScaler": {"transform", "inverse_transform"},
    "SimpleImputer": {"transform", "inverse_transform"},
    "QuantileClipper": {"transform"},
}
METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "inverse_transform",
)


def _expected_methods(name: str, kind: str) -> set[str]:
    return HAS.get(name.split("(")[0], HAS.get(kind, set()))


def _forwarding_body(comm):
    import warnings

    from mpi4py import MPI
    from sklearn.base import clone

    rank = comm.Get_rank()
    found = {}
    for name, (kind, make) in FAMILIES.items():
        X, y, w = _rows("", kind, rank)
        if kind == "classifier":
            y = np.digitize(X[:, 0], [-0.5, 0.5]).astype(float)  # three classes
        estimator = make(comm)
        before = {m for m in METHODS if hasattr(estimator, m)}
        copy = clone(estimator)
        same_params = copy.get_params() == estimator.get_params()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind in SUPERVISED:
                estimator.fit(X, y, sample_weight=w)
            elif kind in WEIGHTED:
                estimator.fit(X, sample_weight=w)
            else:
                estimator.fit(X)
            after = {m for m in METHODS if hasattr(estimator, m)}
            results = {}
            for method in sorted(after):
                rows = X if method != "inverse_transform" else estimator.transform(X)
                mine = getattr(estimator, method)(rows)
                plain = (
                    getattr(estimator.estimator_, method)(rows) if len(rows) else None
                )
                results[method] = (
                    mine.shape,
                    mine.dtype.str,
                    None if plain is None else bool(np.array_equal(mine, plain)),
                )
        # Attributes other than the parameter that hold a communicator (none should).
        communicators = [
            k
            for k, v in vars(estimator).items()
            if k != "comm" and isinstance(v, MPI.Comm)
        ]
        found[name] = (before, after, same_params, results, communicators)
    return found


@pytest.mark.mpi(ranks=[2])
def test_prediction_is_forwarded_as_scikit_learn_has_it(mpi_ranks):
    rank0, rank1 = run_function(_forwarding_body, mpi_ranks)
    for name, (kind, _) in FAMILIES.items():
        expected = _expected_methods(name, kind)
        before, after, same_params, results, communicators = rank0[name]
        assert before == after == expected, name
        assert rank1[name][0] == rank1[name][1] == expected, name
        assert same_params and rank1[name][2], name
        # The parameter comm is resolved in fit, never kept as an attribute.
        assert communicators == [] and rank1[name][4] == [], name
        for method, (shape, dtype, equal) in results.items():
            # Rank 0's rows: exactly what the plain scikit-learn model gives.
            assert equal is True and shape[0] == N, (name, method)
            # The rank without rows: an empty result of the same width and dtype.
            empty_shape, empty_dtype, _ = rank1[name][3][method]
            assert empty_shape == (0, *shape[1:]) and empty_dtype == dtype, (
                name,
                method,
            )


def _rank_dependent_body(comm):
    """Calls whose arguments or labels depend on the rank: each case's outcome per rank."""
    from sklearn.exceptions import NotFittedError

    from mpitrain.linear_model import LogisticRegression, Ridge
    from mpitrain.model_selection import GridSearchCV, cross_validate, train_test_split

    rank = comm.Get_rank()
    rng = np.random.default_rng(rank)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    yr = X @ [1.0, 2.0, -1.0, 0.5]
    cases = {
        "C refused on rank 1": lambda: LogisticRegression(
            C=1.0 if rank == 0 else -1.0, comm=comm
        ).fit(X, y),
        "alpha by rank": lambda: Ridge(alpha=1.0 + 100 * rank, comm=comm).fit(X, yr),
        "strategy by rank": lambda: LogisticRegression(
            strategy="exact" if rank == 0 else "average", comm=comm
        ).fit(X, y),
        "labels of two types": lambda: LogisticRegression(comm=comm).fit(
            X, np.array([f"c{v}" for v in y]) if rank == 1 else y
        ),
        "y a column on rank 1": lambda: Ridge(comm=comm).fit(
            X, yr.reshape(-1, 1) if rank == 1 else yr
        ),
        "cv by rank": lambda: cross_validate(Ridge(), X, yr, cv=3 + rank, comm=comm),
        "test_size by rank": lambda: train_test_split(
            X, yr, test_size=0.2 if rank == 0 else 0.5, comm=comm
        ),
        "search not fitted": lambda: GridSearchCV(
            Ridge(), {"alpha": [0.1, 1.0]}, comm=comm
        ).predict(X),
        "cross_validate error_score": lambda: cross_validate(
            Ridge(), X, yr, error_score="ignore", comm=comm
        ),
        "search error_score": lambda: GridSearchCV(
            Ridge(), {"alpha": [0.1, 1.0]}, error_score="ignore", comm=comm
        ).fit(X, yr),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = "returned"
        except NotFittedError as exc:
            out[name] = f"NotFittedError: {exc}"
        except ValueError as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.mpi(ranks=[2])
def test_rank_dependent_arguments_are_refused_on_every_rank(mpi_ranks):
    """No hang, no rank going on alone, no silently different models: every rank raises."""
    first, second = run_function(_rank_dependent_body, mpi_ranks)
    expected = {
        "C refused on rank 1": "checking the parameters failed on rank 1 (of 2)",
        "alpha by rank": "different parameters (alpha: rank 0: 1.0, rank 1: 101.0)",
        "strategy by rank": "(strategy: rank 0: 'exact', rank 1: 'average')",
        "labels of two types": "Mix of label input types (string and number)",
        "y a column on rank 1": "ranks give y of different shapes (rank 0: 1-D, rank 1: 2-D",
        "cv by rank": "different arguments (cv: rank 0: 3, rank 1: 4)",
        "test_size by rank": "(test_size: rank 0: 0.2, rank 1: 0.5)",
        "search not fitted": "NotFittedError",
        "cross_validate error_score": "error_score must be 'raise' or a number",
        "search error_score": "error_score must be 'raise' or a number",
    }
    for name, text in expected.items():
        assert text in first[name], (name, first[name])
        if name == "C refused on rank 1":
            # The rank that refused its own value raises scikit-learn's error.
            assert "The 'C' parameter of LogisticRegression" in second[name]
        else:
            assert text in second[name], (name, second[name])
