"""One validation of a rank's rows: features, target and sample weights, allowing zero rows.

Every distributed estimator checks its input in two steps, always these:

1. :func:`check_local_rows` (Local): this rank's ``X``, ``y`` and
   ``sample_weight``, with scikit-learn's *public* checks (``validate_data``,
   ``check_array``, ``column_or_1d``, ``check_classification_targets``)
   and one set of our own messages for sample weights.  A rank may hold no
   rows, and a rank's weights may all be zero.  Called inside :func:`mpitrain.comm.collective_check`, so an
   error found on one rank is raised, identically, on every rank.
2. :func:`agree_rows` (Collective): what only all ranks together can tell:
   the same columns (number and names) everywhere, weights given on every
   rank or on none, some row somewhere, a positive total weight.

Messages do not name the estimator, so the same bad input gives the same
message from every family (the agreement adds which ranks found it).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    assert_all_finite,
    check_array,
    column_or_1d,
    validate_data,
)

from mpitrain.comm import agree, allgather_object, allreduce_minmax
from mpitrain.errors import DistributedError, format_ranks
from mpitrain.utils._rows import require_rows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "FLOAT_DTYPES",
    "TARGETS",
    "check_local_X",
    "check_local_target",
    "check_local_weights",
    "check_local_rows",
    "GlobalRows",
    "require_rows",
    "agree_rows",
]

#: The dtypes the estimators compute in (float32 is kept where scikit-learn keeps it).
FLOAT_DTYPES = (np.float64, np.float32)

#: The kinds of target ``fit`` takes: a number per row (``"continuous"``,
#: several per row with ``multi_output``) or a class label (``"classes"``).
TARGETS = ("continuous", "classes")


def check_local_X(
    estimator: Any,
    X: Any,
    *,
    reset: bool | None,
    accept_sparse: Any = False,
    dtype: Any = FLOAT_DTYPES,
    ensure_all_finite: bool | str = True,
    copy: bool = False,
) -> Any:
    """This rank's feature rows, checked as scikit-learn does, possibly none. Local.

    :func:`sklearn.utils.validation.validate_data` (2-D, dtype, sparse
    format, at least one column, ``n_features_in_`` and
    ``feature_names_in_``: set when ``reset``, compared otherwise), with no
    minimum number of rows.  Finiteness is checked apart, without the
    estimator's name, so that every family gives the same message.

    Parameters
    ----------
    estimator : estimator
        Receives ``n_features_in_`` (and ``feature_names_in_``) when ``reset``.
    X : array-like or sparse matrix of shape (n_local_rows, n_features)
    reset : bool or None
        True in ``fit``; False when predicting or transforming; None for
        rows in another column space (``inverse_transform``'s input), whose
        columns are not compared with ``fit``'s.
    accept_sparse, dtype, copy
        As for :func:`sklearn.utils.check_array`.
    ensure_all_finite : bool or "allow-nan", default=True

    Returns
    -------
    X : ndarray or sparse matrix
    """
    checks = dict(
        accept_sparse=accept_sparse,
        dtype=dtype,
        ensure_all_finite=False,
        ensure_min_samples=0,
        copy=copy,
    )
    if reset is None:
        X = check_array(X, input_name="X", **checks)
    else:
        X = validate_data(estimator, X, reset=reset, **checks)
    if ensure_all_finite:
        _assert_finite(X, allow_nan=ensure_all_finite == "allow-nan", input_name="X")
    return X


def _assert_finite(values: Any, *, allow_nan: bool, input_name: str) -> None:
    """Refuse infinity (and NaN unless allowed), with a message that depends on the data only. Local.

    scikit-learn's message for infinity also depends on whether NaN is
    allowed; here it does not, so the same rows give the same message from
    every family (a transformer that keeps NaN and a model that refuses it).
    """
    try:
        assert_all_finite(values, allow_nan=allow_nan, input_name=input_name)
    except ValueError:
        data = values.data if sparse.issparse(values) else np.asarray(values)
        if data.dtype.kind in "fc" and np.isinf(data).any():
            raise ValueError(
                f"Input {input_name} contains infinity or a value too large for "
                f"{data.dtype!r}."
            ) from None
        raise ValueError(f"Input {input_name} contains NaN.") from None


def check_local_target(
    y: Any, n_rows: int, *, target: str, multi_output: bool = False
) -> np.ndarray:
    """This rank's target, possibly empty. Local.

    Parameters
    ----------
    y : array-like of shape (n_local_rows,) or (n_local_rows, n_targets)
    n_rows : int
        Rows of this rank's ``X``.
    target : {"continuous", "classes"}
        ``"continuous"``: finite numbers, converted to float64 unless
        already floating.  ``"classes"``: finite labels of a classification
        target (scikit-learn's ``check_classification_targets``).
    multi_output : bool, default=False
        Accept a 2-D continuous target (kept 2-D, even with one column);
        otherwise a column vector is raveled with a ``DataConversionWarning``
        and more columns are refused.

    Returns
    -------
    y : ndarray
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if y is None:
        raise ValueError(
            "fit requires y to be passed, but the target y is None: "
            "give every rank its rows' targets (an empty array on a rank without rows)"
        )
    if target == "continuous" and multi_output:
        y = check_array(
            y,
            ensure_2d=False,
            dtype=None,
            ensure_all_finite=False,
            ensure_min_samples=0,
            input_name="y",
        )
    else:
        y = column_or_1d(y, warn=True)
    if target == "continuous" and y.dtype.kind != "f":
        y = y.astype(np.float64)
    _assert_finite(y, allow_nan=False, input_name="y")
    if target == "classes" and y.shape[0]:
        check_classification_targets(y)
    if y.shape[0] != n_rows:
        # scikit-learn's message (check_consistent_length's), X's rows first.
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"[{n_rows}, {y.shape[0]}]"
        )
    return y


def check_local_weights(sample_weight: Any, n_rows: int) -> np.ndarray | None:
    """This rank's sample weights as float64: finite, non-negative, one per row. Local.

    A scalar is a weight for every row; ``None`` stays ``None`` (unweighted).
    All weights of one rank may be zero: only the total over all ranks must
    be positive (see :func:`agree_rows`).

    Returns
    -------
    ndarray of shape (n_rows,) or None
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number) or (
        isinstance(sample_weight, np.ndarray) and sample_weight.ndim == 0
    ):
        weights = np.full(n_rows, sample_weight, dtype=np.float64)
    else:
        weights = check_array(
            sample_weight,
            ensure_2d=False,
            dtype=np.float64,
            ensure_all_finite=False,
            ensure_min_samples=0,
            input_name="sample_weight",
        )
    if weights.shape != (n_rows,):
        raise ValueError(
            f"sample_weight has shape {weights.shape}; expected ({n_rows},): "
            "one weight per row of X"
        )
    kinds = [
        name
        for name, found in (
            ("NaN", np.isnan(weights).any()),
            ("infinity", np.isinf(weights).any()),
            ("negative values", (weights < 0).any()),
        )
        if found
    ]
    if kinds:
        raise ValueError(
            f"sample_weight must be finite and non-negative; it has {' and '.join(kinds)}"
        )
    return weights


def check_local_rows(
    estimator: Any,
    X: Any,
    y: Any = None,
    sample_weight: Any = None,
    *,
    target: str | None = None,
    multi_output: bool = False,
    **x_checks: Any,
) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """This rank's rows, target and sample weights, checked one way, possibly none. Local.

    The one input check of mpitrain's ``fit`` methods:
    :func:`check_local_X` (with ``reset=True``), then
    :func:`check_local_target` if ``target`` is given (``y`` is ignored
    otherwise, as transformers ignore it), then
    :func:`check_local_weights`.  Call it inside
    :func:`mpitrain.comm.collective_check` and follow it with
    :func:`agree_rows`.

    Parameters
    ----------
    estimator : estimator
    X : array-like or sparse matrix of shape (n_local_rows, n_features)
    y : array-like, default=None
    sample_weight : array-like of shape (n_local_rows,) or scalar, default=None
    target : {"continuous", "classes"} or None, default=None
    multi_output : bool, default=False
    **x_checks
        ``accept_sparse``, ``dtype``, ``ensure_all_finite``, ``copy`` of
        :func:`check_local_X`.

    Returns
    -------
    X, y, sample_weight
        ``y`` is ``None`` without a ``target``; ``sample_weight`` is
        ``None`` when not given.
    """
    X = check_local_X(estimator, X, reset=True, **x_checks)
    n_rows = X.shape[0]
    if target is not None:
        y = check_local_target(y, n_rows, target=target, multi_output=multi_output)
    else:
        y = None
    return X, y, check_local_weights(sample_weight, n_rows)


@dataclass(frozen=True)
class GlobalRows:
    """What every rank knows of all ranks' rows after :func:`agree_rows`; identical everywhere.

    Attributes
    ----------
    rows_per_rank : tuple of int
        Rows of each rank, in rank order.
    weight : float
        Total sample weight of all ranks (the number of rows when unweighted).
    weighted : bool
        Whether sample weights were given (on every rank).
    dtype : numpy.dtype
        The widest dtype of ``X`` among the ranks that hold rows.
    rank : int
        This rank.
    """

    rows_per_rank: tuple[int, ...]
    weight: float
    weighted: bool
    dtype: np.dtype
    rank: int

    @property
    def n_rows(self) -> int:
        """Rows of all ranks together."""
        return sum(self.rows_per_rank)

    @property
    def offset(self) -> int:
        """Rows of the ranks before this one: this rank's first global row number."""
        return sum(self.rows_per_rank[: self.rank])


def _target_shape(y: Any) -> str:
    """``"1-D"`` or ``"2-D with K columns"``. Pure."""
    shape = np.shape(y)
    return "1-D" if len(shape) < 2 else f"2-D with {shape[1]} column(s)"


def agree_rows(
    comm: Intracomm,
    X: Any,
    sample_weight: np.ndarray | None = None,
    *,
    estimator: Any = None,
    y: Any = None,
) -> GlobalRows:
    """Agree on what only all ranks together can check. Collective over ``comm``.

    One small ``allgather`` of every rank's row count, number of features,
    feature names, dtype and weight total; every rank then raises the same
    error if the ranks have different numbers of features or different
    feature names, if sample weights were given on some ranks only, if no
    rank has a row, or if the weights of all rows sum to zero.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
    X : ndarray or sparse matrix of shape (n_local_rows, n_features)
        This rank's checked rows (see :func:`check_local_rows`).
    sample_weight : ndarray of shape (n_local_rows,) or None
    estimator : estimator, default=None
        Whose ``feature_names_in_`` (if any) must agree.
    y : ndarray or None, default=None
        This rank's checked targets: 1-D on every rank with rows, or 2-D
        with as many columns (a column vector on one rank only would fit a
        model of another shape there).

    Returns
    -------
    GlobalRows
    """
    names = getattr(estimator, "feature_names_in_", None)
    weighted = sample_weight is not None
    mine = (
        int(X.shape[0]),
        int(X.shape[1]),
        None if names is None else tuple(str(n) for n in names),
        np.dtype(X.dtype).str,
        weighted,
        float(np.sum(sample_weight)) if weighted else float(X.shape[0]),
        None if y is None else _target_shape(y),
    )
    everyone = allgather_object(mine, comm)
    size = len(everyone)
    shapes = {m[6] for m in everyone if m[0] > 0 and m[6] is not None}
    if len(shapes) > 1:
        listing = ", ".join(
            f"rank {r}: {m[6]}" for r, m in enumerate(everyone) if m[0] > 0
        )
        raise ValueError(
            f"ranks give y of different shapes ({listing}); give the same on every rank"
        )
    for index, what in ((1, "numbers of features"), (2, "feature names")):
        if len({m[index] for m in everyone}) > 1:
            listing = ", ".join(f"rank {r}: {m[index]}" for r, m in enumerate(everyone))
            raise ValueError(f"ranks have different {what} ({listing})")
    with_weights = [r for r, m in enumerate(everyone) if m[4]]
    if with_weights and len(with_weights) < size:
        raise ValueError(
            f"sample_weight was given on {format_ranks(with_weights, size)} of {size} only; "
            "give it on every rank (an empty array on a rank without rows) or on none"
        )
    rows = tuple(m[0] for m in everyone)
    # Summed in rank order from the gathered values: the same total on every rank.
    total = math.fsum(m[5] for m in everyone)
    require_rows(sum(rows), size, total if with_weights else None)
    dtypes = [np.dtype(m[3]) for m in everyone if m[0] > 0]
    return GlobalRows(
        rows_per_rank=rows,
        weight=total,
        weighted=bool(with_weights),
        dtype=np.result_type(*dtypes),
        rank=comm.Get_rank(),
    )


#: Parameters a rank may set apart from the others: they change no result.
_PER_RANK_PARAMS = ("comm", "verbose")


def canonical_value(value: Any) -> Any:
    """A rank-independent, comparable stand-in for a parameter's value. Pure.

    Numbers, text and their containers as they are; arrays by dtype, shape
    and a digest of their bytes; estimators by their type (their parameters
    are compared one by one); anything else (a callable, a random
    generator) by its type, since its ``repr`` may hold an address.
    """
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, np.generic):
        return canonical_value(value.item())
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        digest = hashlib.sha256(
            data.view(np.uint8)
            if data.dtype != object
            else repr(data.tolist()).encode()
        ).hexdigest()
        return ("ndarray", data.dtype.str, data.shape, digest)
    if isinstance(value, (list, tuple)):
        return tuple(canonical_value(v) for v in value)
    if isinstance(value, dict):
        return {str(k): canonical_value(v) for k, v in sorted(value.items(), key=str)}
    kind = type(value)
    return ("object", f"{kind.__module__}.{kind.__qualname__}")


def estimator_parameters(estimator: Any) -> dict[str, Any]:
    """``estimator``'s parameters (nested ones too) as comparable values. Local."""
    params = estimator.get_params(deep=True)
    out = {}
    for name, value in sorted(params.items()):
        last = name.rsplit("__", 1)[-1]
        if last in _PER_RANK_PARAMS:
            continue
        if last == "cv" and not isinstance(value, numbers.Integral):
            # This rank's fold id of each of its rows (a search's, stacking's):
            # row-aligned, so different on every rank by design.
            value = "fold ids"
        out[name] = canonical_value(value)
    return out


def agree_parameters(estimator: Any, comm: Intracomm, check: Any = None) -> None:
    """Check ``estimator``'s parameters on every rank, then that every rank has the same. Collective over ``comm``.

    ``check`` (default: scikit-learn's ``_validate_params`` and the
    estimator's own ``_check_params``) runs on every rank; see
    :func:`agree_values` for what is raised where.
    """

    def checked() -> dict[str, Any]:
        if check is None:
            estimator._validate_params()
            estimator._check_params()
        else:
            check()
        return estimator_parameters(estimator)

    agree_values(
        checked,
        comm,
        what="checking the parameters",
        differ=f"the ranks built {type(estimator).__name__} with different parameters",
    )


def agree_values(values: Any, comm: Intracomm, *, what: str, differ: str) -> None:
    """Every rank's ``values()`` checked and compared. Collective over ``comm``.

    One small ``Allreduce`` of each rank's verdict (whether ``values()``
    raised) and a 48-bit digest of the values it returned (a dict of
    canonical values, see :func:`estimator_parameters`; 48 bits travel
    exactly as float64).  A rank whose ``values()`` raised raises its own
    error; the others raise :func:`~mpitrain.comm.agree`'s
    ``DistributedValueError`` (or its kin) naming it, so no rank goes on
    into later collectives alone.  Different values on different ranks (a
    value that depends on the rank) raise a ``ValueError`` on every rank,
    starting with ``differ`` and naming the values that differ.  Only these
    two error paths gather anything (:func:`~mpitrain.comm.agree`'s messages,
    or an ``allgather`` of the values).
    """
    failure: BaseException | None = None
    mine: dict[str, Any] = {}
    try:
        mine = values()
    except Exception as exc:
        failure = exc
    digest = int.from_bytes(hashlib.sha256(repr(mine).encode()).digest()[:6], "big")
    low, high = allreduce_minmax(
        np.array([failure is not None, digest], dtype=np.int64), comm
    )
    if high[0]:
        # The ranks' messages, grouped as every agreed failure is; the rank
        # that refused its own value raises its own error.
        try:
            agree(failure, comm, what, quiet=False)
        except DistributedError:
            if failure is not None:
                raise failure from None
            raise
    if low[1] == high[1]:
        return
    gathered = allgather_object(mine, comm)
    names = sorted({n for v in gathered for n in v})
    different = [n for n in names if len({repr(v.get(n)) for v in gathered}) > 1]
    shown = "; ".join(
        f"{n}: "
        + ", ".join(f"rank {r}: {_shown(v.get(n))}" for r, v in enumerate(gathered))
        for n in different[:3]
    )
    raise ValueError(
        f"{differ} ({shown}{'; ...' if len(different) > 3 else ''}); every rank "
        "must give the same"
    )


def _shown(value: Any) -> str:
    """A canonical value, short. Pure."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
