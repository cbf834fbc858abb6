"""The one place for private scikit-learn and scipy APIs that nothing public replaces.

mpitrain uses the public APIs of scikit-learn and scipy everywhere else.
What is here either

* **wraps** a private name that has no public equivalent: it is imported
  only here, after checking that the installed release is one mpitrain
  supports, so an unsupported or changed release fails when mpitrain's
  estimators are imported, with an :class:`ImportError` that names the
  package, the installed version and the supported range, rather than with
  an ``AttributeError`` in the middle of a fit on some ranks; or
* **replaces** a small private helper with a copy of its documented
  behaviour, so that no private import is needed at all; or
* **bridges releases**: parameters that a newer scikit-learn added or
  deprecated (:func:`sklearn_params`), and fitted attributes whose form
  changed, which are taken from the installed release by fitting its own
  estimator on two rows (:func:`scaler_count_dtype`,
  :func:`constant_imputer_statistics`).

Import these names from here, never from the private modules.  The oldest
supported releases are the ones declared in ``pyproject.toml`` and tested by
CI in an environment pinned to them (``.ci/minimum-versions.txt``); the
newest are the newest tested.  Newer releases are not refused: a private
name they moved is reported with the range that is known to work.
"""

from __future__ import annotations

import functools
import importlib
import numbers
import re
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy
import sklearn
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning

if TYPE_CHECKING:  # pragma: no cover
    from scipy.optimize import OptimizeResult

__all__ = [
    "infer_pca_dimension",
    "openmp_effective_n_threads",
    "SKLEARN_SUPPORTED",
    "SCIPY_SUPPORTED",
    "Hidden",
    "Interval",
    "MissingValues",
    "StrOptions",
    "handle_zeros_in_scale",
    "is_constant_feature",
    "num_samples",
    "check_optimize_result",
    "lbfgsb_setulb",
    "lbfgsb_message",
    "check_version",
    "private_names",
    "sklearn_params",
    "scaler_count_dtype",
    "constant_imputer_statistics",
    "libsvm_gamma",
    "set_libsvm_gamma",
    "libsvm_support_counts",
    "set_libsvm_state",
    "SETULB_SIGNATURE",
    "mlp_optimizers",
    "mlp_sample_weight",
    "mlp_initialize",
    "mlp_backprop",
    "mlp_label_binarizer",
    "set_stacking_state",
]

#: (oldest, newest) ``(major, minor)`` releases of scikit-learn that mpitrain
#: is tested with; the oldest is the minimum declared in ``pyproject.toml``.
SKLEARN_SUPPORTED = ((1, 6), (1, 9))
#: The same for scipy.
SCIPY_SUPPORTED = ((1, 9), (1, 17))


def _minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"1.6.1"`` or ``"1.9.dev0"``. Pure."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _range(supported: tuple[tuple[int, int], tuple[int, int]]) -> str:
    (a, b), (c, d) = supported
    return f"{a}.{b} to {c}.{d}"


def check_version(
    package: str,
    installed: str,
    supported: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    """Refuse a release older than the oldest supported one. Pure.

    Raises
    ------
    ImportError
        Naming the package, the installed version and the supported range.
    """
    if _minor(installed) < supported[0]:
        a, b = supported[0]
        raise ImportError(
            f"mpitrain needs {package} >= {a}.{b} (supported: {_range(supported)}), "
            f"but {package} {installed} is installed: pip install '{package}>={a}.{b}'"
        )


def private_names(
    package: str,
    installed: str,
    supported: tuple[tuple[int, int], tuple[int, int]],
    module: str,
    names: Sequence[str],
) -> tuple[Any, ...]:
    """Private ``names`` of ``module``, after checking the installed release. Local.

    Raises
    ------
    ImportError
        If the release is older than supported, or does not have one of the
        names (a newer release moved it): the message names the package, its
        version, the private name and the supported range.
    """
    check_version(package, installed, supported)
    try:
        found = importlib.import_module(module)
        return tuple(getattr(found, name) for name in names)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"mpitrain uses {package}'s private {module} ({', '.join(names)}), which "
            f"{package} {installed} does not provide; mpitrain supports {package} "
            f"{_range(supported)}: pip install '{package}>={supported[0][0]}."
            f"{supported[0][1]},<{supported[1][0]}.{supported[1][1] + 1}' "
            f"(or report it: {exc})"
        ) from exc


# ----------------------------------------------------------------------------
# Wrapped: scikit-learn's parameter constraints
#
# An estimator declares its parameters' types and ranges in
# ``_parameter_constraints`` with these classes, and scikit-learn's
# ``BaseEstimator._validate_params`` checks them with scikit-learn's own
# messages.  No public module exports them (scikit-learn 1.2 to 1.9).
# mpitrain's estimators also extend the ``_parameter_constraints`` of the
# scikit-learn estimator they wrap and call ``_validate_params``; the method
# is checked here, so a release without it fails at import, not in ``fit``
# (the constraints of every family are exercised at the oldest and newest
# supported release by tests/test_families.py).

# scikit-learn accepts older scipy releases than mpitrain is tested with.
check_version("scipy", scipy.__version__, SCIPY_SUPPORTED)
Interval, StrOptions, Hidden, MissingValues = private_names(
    "scikit-learn",
    sklearn.__version__,
    SKLEARN_SUPPORTED,
    "sklearn.utils._param_validation",
    ("Interval", "StrOptions", "Hidden", "MissingValues"),
)
if not callable(getattr(BaseEstimator, "_validate_params", None)):  # pragma: no cover
    raise ImportError(
        f"mpitrain uses scikit-learn's BaseEstimator._validate_params, which "
        f"scikit-learn {sklearn.__version__} does not provide; mpitrain supports "
        f"scikit-learn {_range(SKLEARN_SUPPORTED)}"
    )


# ----------------------------------------------------------------------------
# Wrapped: StandardScaler's rule for "constant up to rounding"
#
# mpitrain's StandardScaler computes the moments across ranks and then must
# decide, exactly as scikit-learn's does, which columns are constant (scale
# 1).  Using scikit-learn's own functions keeps the two equal should the rule
# change.

_handle_zeros_in_scale, _is_constant_feature = private_names(
    "scikit-learn",
    sklearn.__version__,
    SKLEARN_SUPPORTED,
    "sklearn.preprocessing._data",
    ("_handle_zeros_in_scale", "_is_constant_feature"),
)


def is_constant_feature(var: np.ndarray, mean: np.ndarray, n_samples: Any) -> Any:
    """Columns whose variance is rounding noise, by scikit-learn's StandardScaler rule. Pure."""
    return _is_constant_feature(var, mean, n_samples)


def handle_zeros_in_scale(
    scale: np.ndarray, copy: bool = True, constant_mask: Any = None
) -> np.ndarray:
    """``scale`` with 1 for constant columns, as scikit-learn's StandardScaler sets it. Pure."""
    return _handle_zeros_in_scale(scale, copy=copy, constant_mask=constant_mask)


# ----------------------------------------------------------------------------
# Wrapped: PCA's choice of n_components="mle" and k-means' thread count
#
# mpitrain's PCA keeps as many components as scikit-learn's for
# n_components="mle" (Minka's estimate, ``_infer_dimension``), and its
# KMeans hands scikit-learn's estimator the thread count that ``predict``
# reads (``_n_threads``, from ``_openmp_effective_n_threads``).  Checked on
# first use: importing sklearn.decomposition here would slow every import.


def infer_pca_dimension(spectrum: np.ndarray, n_samples: int) -> int:
    """scikit-learn PCA's number of components for ``n_components="mle"``. Pure."""
    (infer,) = private_names(
        "scikit-learn",
        sklearn.__version__,
        SKLEARN_SUPPORTED,
        "sklearn.decomposition._pca",
        ("_infer_dimension",),
    )
    return int(infer(spectrum, n_samples))


def openmp_effective_n_threads() -> int:
    """The OpenMP threads scikit-learn's KMeans would use (its ``_n_threads``). Local."""
    (effective,) = private_names(
        "scikit-learn",
        sklearn.__version__,
        SKLEARN_SUPPORTED,
        "sklearn.utils._openmp_helpers",
        ("_openmp_effective_n_threads",),
    )
    return int(effective())


# ----------------------------------------------------------------------------
# Wrapped: scikit-learn's chunked Lloyd labelling
#
# mpitrain's KMeans labels each rank's rows with scikit-learn's own compiled
# Lloyd step (``lloyd_iter_chunked_dense`` with ``update_centers=False``,
# which scikit-learn's ``_labels_inertia`` calls): 256 rows at a time, the
# distance product and the nearest centre while the rows are in cache, its
# arithmetic and first-index tie rule.  Its centre update is not used: it
# averages and relocates empty clusters over the rows it is given, which on
# a rank are only that rank's.  Checked on first use.


@functools.cache
def _lloyd_iteration() -> Callable[..., None]:
    # Resolved once: k-means labels its rows with it every iteration.
    (iterate,) = private_names(
        "scikit-learn",
        sklearn.__version__,
        SKLEARN_SUPPORTED,
        "sklearn.cluster._k_means_lloyd",
        ("lloyd_iter_chunked_dense",),
    )
    return iterate


def lloyd_labels(
    X: np.ndarray,
    sample_weight: np.ndarray,
    centers: np.ndarray,
    labels: np.ndarray,
    n_threads: int,
) -> None:
    """The nearest centre of every row into ``labels`` (int32), by scikit-learn's Lloyd code. Local.

    ``X`` and ``centers`` C-contiguous float64, ``sample_weight`` float64
    (not used for the labels, but part of the signature).
    """
    k, d = centers.shape
    _lloyd_iteration()(
        X,
        sample_weight,
        centers,
        np.zeros((k, d)),
        np.zeros(k),
        labels,
        np.zeros(k),
        n_threads,
        update_centers=False,
    )


# ----------------------------------------------------------------------------
# Wrapped: libsvm's fitted state on scikit-learn's SVC and SVR
#
# The cascade computes kernels with a fitted model's numeric gamma ("scale"
# and "auto" resolved), splits dual coefficients by per-class support counts,
# and builds a plain scikit-learn SVC/SVR from merged parts or from a model
# fitted by scikit-learn-intelex.  libsvm's predict reads these private
# attributes (scikit-learn 1.6 to 1.9); nothing public reads or sets them.


def _libsvm_attribute(model: Any, name: str) -> Any:
    try:
        return getattr(model, name)
    except AttributeError as exc:
        raise AttributeError(
            f"mpitrain reads libsvm's {name} of a fitted {type(model).__name__}, "
            f"which scikit-learn {sklearn.__version__} does not set; mpitrain "
            f"supports scikit-learn {_range(SKLEARN_SUPPORTED)}"
        ) from exc


def libsvm_gamma(model: Any) -> float:
    """The numeric kernel coefficient a fitted SVC/SVR uses. Local."""
    return float(_libsvm_attribute(model, "_gamma"))


def set_libsvm_gamma(model: Any, gamma: float) -> None:
    """Make a fitted SVC/SVR use ``gamma``, whatever its ``gamma`` parameter says. Local."""
    model._gamma = float(gamma)


def libsvm_support_counts(model: Any) -> np.ndarray:
    """Support vectors per class (two equal counts for a regressor), as libsvm keeps them. Local."""
    return np.asarray(_libsvm_attribute(model, "_n_support"))


def set_libsvm_state(
    model: Any,
    *,
    n_support: np.ndarray,
    dual_coef: np.ndarray,
    intercept: np.ndarray,
    two_classes: bool,
    gamma: float,
) -> None:
    """libsvm's fitted state on a fresh SVC/SVR whose public attributes are set. Local.

    The form scikit-learn's own ``fit`` leaves: libsvm's dual coefficients
    and intercepts have the opposite sign for two classes; no probability
    estimates (empty arrays); dense support vectors.
    """
    model._n_support = n_support
    model._dual_coef_ = -dual_coef if two_classes else dual_coef
    model._intercept_ = -intercept if two_classes else intercept.copy()
    model._probA = np.empty(0)
    model._probB = np.empty(0)
    model._sparse = False
    model._gamma = float(gamma)


# ----------------------------------------------------------------------------
# Fitted attributes whose form changed between supported releases
#
# Where scikit-learn 1.8 changed what a fit stores, mpitrain asks the
# installed release: it fits scikit-learn's own estimator on two rows that
# have what the result depends on, instead of hard-coding one release's rule.


def scaler_count_dtype(
    *, with_mean: bool, with_std: bool, weighted: bool, dtype: Any
) -> np.dtype:
    """The dtype of StandardScaler's ``n_samples_seen_`` in the installed scikit-learn. Local.

    float64 whenever moments are computed since scikit-learn 1.8; int64
    before that, or the data's dtype when weighted.
    """
    from sklearn.preprocessing import StandardScaler

    X = np.array([[0.0], [1.0]], dtype=dtype)
    weights = np.ones(2, dtype=dtype) if weighted else None
    scaler = StandardScaler(with_mean=with_mean, with_std=with_std)
    return np.asarray(scaler.fit(X, sample_weight=weights).n_samples_seen_).dtype


def constant_imputer_statistics(
    imputer: Any, empty: np.ndarray, dtype: Any
) -> np.ndarray:
    """``statistics_`` of an unfitted constant-strategy SimpleImputer, as the installed release fits them. Local.

    They depend only on the parameters, the data's dtype and which columns
    hold no value at all (``empty``); scikit-learn 1.8 made them an object
    array with NaN for those columns, earlier releases fill every column in
    the data's dtype.  ``imputer`` is not modified.
    """
    from sklearn.base import clone

    marker = imputer.missing_values
    usable = 1 if not _is_nan(marker) and marker == 0 else 0
    rows = np.full((2, empty.size), usable, dtype=dtype)
    if empty.any():  # never for integer data with a NaN marker, which cannot hold NaN
        rows[:, empty] = np.nan if _is_nan(marker) else marker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # columns without a value are the point
        return clone(imputer).fit(rows).statistics_


def _is_nan(value: Any) -> bool:
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # pandas.NA and the like
        return True


# ----------------------------------------------------------------------------
# Parameters that scikit-learn added after the oldest supported release


def sklearn_params(
    sklearn_class: type, params: dict[str, Any], own_class: type
) -> dict[str, Any]:
    """``params`` that the installed scikit-learn's ``sklearn_class`` takes. Local.

    mpitrain's estimators take the parameters of the newest supported
    scikit-learn.  One that an older supported release does not have yet
    (``LinearRegression(tol=...)``, new in scikit-learn 1.7) is left out
    while it holds the default of ``own_class``, which is what that release
    does anyway; set to anything else it is refused, naming the release.
    A parameter left at our default, which is the newest release's, gets
    the installed release's default where that differs
    (``LogisticRegression``'s ``penalty="deprecated"`` and ``l1_ratio=0.0``
    of scikit-learn 1.8 are ``"l2"`` and ``None`` before it), so
    ``estimator_`` is valid for the installed scikit-learn and fits without
    its warnings.  Parameters are the same on every rank, so an error here
    is raised on all of them.

    Raises
    ------
    ValueError
        A parameter the installed scikit-learn does not have, set to a value
        other than its default.
    """
    import inspect

    accepted = inspect.signature(sklearn_class.__init__).parameters
    defaults = {
        name: p.default for name, p in inspect.signature(own_class).parameters.items()
    }
    kept = {}
    for name, value in params.items():
        if name in accepted:
            installed = accepted[name].default
            if (
                name in defaults
                and _same(value, defaults[name])
                and not _same(installed, defaults[name])
            ):
                # Left at our default, which is the newest release's: the
                # installed release's own default means the same to it.
                value = installed
            kept[name] = value
        elif name in defaults and _same(value, defaults[name]):
            continue  # the newer release's default is the older one's behaviour
        else:
            raise ValueError(
                f"{sklearn_class.__name__}({name}={value!r}) needs a newer scikit-learn "
                f"than the installed {sklearn.__version__}, which has no {name!r}; "
                f"leave {name} at its default {defaults.get(name)!r} or upgrade "
                f"scikit-learn (mpitrain supports {_range(SKLEARN_SUPPORTED)})"
            )
    return kept


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value is default or value == default)
    except (TypeError, ValueError):  # arrays compare element-wise
        return False


# ----------------------------------------------------------------------------
# Replaced: small private helpers


def num_samples(X: Any) -> int:
    """Rows of an array-like that has not been validated yet. Pure.

    scikit-learn's rule (its private ``_num_samples``): ``X.shape[0]`` for
    arrays, sparse matrices and data frames, else ``len(X)``.  A rank needs
    it to know whether it holds no rows before scikit-learn's validation,
    which refuses zero rows.

    Raises
    ------
    TypeError
        If ``X`` is not array-like (a scalar, an estimator, ``None``).
    """
    message = f"Expected sequence or array-like, got {type(X)}"
    if callable(getattr(X, "fit", None)):
        raise TypeError(message)  # not the length of an ensemble
    shape = getattr(X, "shape", None)
    if shape is not None:
        if len(shape) == 0:
            raise TypeError(
                f"Input should have at least 1 dimension, got scalar {X!r} instead."
            )
        if isinstance(shape[0], numbers.Integral):
            return int(shape[0])
    if not hasattr(X, "__len__") and hasattr(X, "__array__"):
        X = np.asarray(X)
        return num_samples(X)
    try:
        return len(X)
    except TypeError as exc:
        raise TypeError(message) from exc


def check_optimize_result(
    solver: str,
    result: OptimizeResult,
    max_iter: int | None = None,
    extra_warning_msg: str | None = None,
) -> int:
    """Iterations of an L-BFGS-B result; a ConvergenceWarning if it did not converge. Local.

    The warning says what scikit-learn's private ``_check_optimize_result``
    says for its own lbfgs solver, so mpitrain's logistic regression warns as
    scikit-learn's does.

    Returns
    -------
    int
        ``result.nit``, at most ``max_iter``.
    """
    if solver != "lbfgs":
        raise NotImplementedError(f"only the lbfgs solver is checked, not {solver!r}")
    n_iter = int(result.nit) if max_iter is None else min(int(result.nit), max_iter)
    if result.status != 0:
        message = (
            f"{solver} failed to converge after {n_iter} iteration(s) "
            f"(status={result.status}):\n{result.message}\n"
        )
        if max_iter is not None and n_iter == max_iter:
            message += (
                "\nIncrease the number of iterations to improve the "
                f"convergence (max_iter={max_iter})."
            )
        message += (
            "\nYou might also want to scale the data as shown in:\n"
            "    https://scikit-learn.org/stable/modules/preprocessing.html"
        )
        if extra_warning_msg is not None:
            message += "\n" + extra_warning_msg
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return n_iter


# ----------------------------------------------------------------------------
# Wrapped, with a public fallback: scipy's compiled L-BFGS-B step
#
# :func:`mpitrain.optimize.lbfgsb` drives scipy's own step routine to make
# the minimiser's state savable.  scipy has no public interface for that;
# where the routine is not the known one, mpitrain restarts the public
# ``scipy.optimize.minimize`` from a saved iterate instead (same optimum
# within the tolerances, not the same bits), so nothing is refused here.

#: The interface of scipy's compiled L-BFGS-B step (scipy 1.15 to 1.17).
SETULB_SIGNATURE = (
    "setulb(m,x,l,u,nbd,f,g,factr,pgtol,wa,iwa,task,lsave,isave,dsave,maxls,ln_task)"
)


def lbfgsb_setulb() -> Callable[..., None] | None:
    """scipy's compiled L-BFGS-B step, or ``None`` if its interface is not the known one. Local."""
    if _minor(scipy.__version__) < (1, 15):
        return None  # an older interface (no ln_task): use the fallback
    try:
        from scipy.optimize import _lbfgsb
    except ImportError:  # pragma: no cover - a newer scipy moved it
        return None
    setulb = getattr(_lbfgsb, "setulb", None)
    doc = (getattr(setulb, "__doc__", "") or "").strip()
    return setulb if doc.startswith(SETULB_SIGNATURE) else None


def lbfgsb_message(status: int, detail: int) -> str:
    """scipy's text for an L-BFGS-B stop (``"CONVERGENCE: ..."``), as ``minimize`` reports it. Local."""
    try:
        from scipy.optimize._lbfgsb_py import status_messages, task_messages

        return f"{status_messages[status]}: {task_messages[detail]}"
    except (ImportError, KeyError):  # pragma: no cover - scipy moved them
        return f"L-BFGS-B task {status}/{detail}"


# ----------------------------------------------------------------------------
# Wrapped: scikit-learn's multilayer perceptron internals
#
# mpitrain.neural_network follows scikit-learn's MLP step by step: the same
# weight initialisation for the same random_state (``_initialize``), the
# same forward and backward pass (``_backprop``) and the same Adam and SGD
# updates (``_stochastic_optimizers``).  None of these is public.  Their
# presence and calling conventions are checked on first use (importing
# scikit-learn's neural_network here would slow every mpitrain import).


def mlp_optimizers() -> tuple[type, type]:
    """scikit-learn's ``(AdamOptimizer, SGDOptimizer)``, checked. Local.

    Raises
    ------
    ImportError
        If the installed scikit-learn does not have them.
    """
    return private_names(
        "scikit-learn",
        sklearn.__version__,
        SKLEARN_SUPPORTED,
        "sklearn.neural_network._stochastic_optimizers",
        ("AdamOptimizer", "SGDOptimizer"),
    )


@functools.cache
def mlp_sample_weight() -> bool:
    """Whether the MLP's ``_backprop`` takes sample weights (scikit-learn >= 1.7). Local.

    Raises
    ------
    ImportError
        If the MLP's private methods are not the known ones.
    """
    import inspect

    from sklearn.neural_network import MLPClassifier

    names = ("_initialize", "_backprop", "_forward_pass")
    if not all(callable(getattr(MLPClassifier, n, None)) for n in names):
        raise ImportError(
            f"mpitrain uses scikit-learn's private MLP methods ({', '.join(names)}), "
            f"which scikit-learn {sklearn.__version__} does not provide; mpitrain supports "
            f"scikit-learn {_range(SKLEARN_SUPPORTED)}"
        )
    params = list(inspect.signature(MLPClassifier._backprop).parameters)
    known = {
        ("self", "X", "y", "activations", "deltas", "coef_grads", "intercept_grads"),
        (
            "self",
            "X",
            "y",
            "sample_weight",
            "activations",
            "deltas",
            "coef_grads",
            "intercept_grads",
        ),
    }
    if tuple(params) not in known:  # pragma: no cover - a newer release changed it
        raise ImportError(
            f"scikit-learn {sklearn.__version__}'s MLP _backprop{tuple(params[1:])} is not a "
            f"known interface; mpitrain supports scikit-learn {_range(SKLEARN_SUPPORTED)}"
        )
    return "sample_weight" in params


def mlp_initialize(
    model: Any, n_outputs: int, layer_units: list[int], random_state: Any
) -> None:
    """scikit-learn's first-fit initialisation of an MLP, in place. Local.

    Sets ``model._random_state`` (drawn from as scikit-learn's ``fit`` does),
    then runs ``_initialize``: ``n_iter_``, ``t_``, ``n_layers_``,
    ``out_activation_``, ``coefs_`` and ``intercepts_`` (Glorot uniform,
    the same draws as scikit-learn's for the same random state),
    ``loss_curve_``, ``best_loss_`` and the like.  A classifier needs its
    ``_label_binarizer`` first (see :func:`mlp_label_binarizer`).
    """
    model._random_state = random_state
    model._initialize(np.empty((0, n_outputs)), layer_units, np.float64)


def mlp_backprop(
    model: Any, X: Any, Y: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """scikit-learn's loss and gradient of an MLP on some rows (``_backprop``). Local.

    Returns the mean loss (sample-weighted) plus ``model.alpha``'s penalty
    over the rows' weight, and the gradients of the coefficients and
    intercepts, as scikit-learn computes them for one batch.
    """
    n_layers = model.n_layers_
    activations = [X] + [None] * (n_layers - 1)
    deltas = [None] * (n_layers - 1)
    coef_grads = [np.empty_like(c) for c in model.coefs_]
    intercept_grads = [np.empty_like(b) for b in model.intercepts_]
    if mlp_sample_weight():
        return model._backprop(
            X, Y, sample_weight, activations, deltas, coef_grads, intercept_grads
        )
    if sample_weight is not None:
        raise ValueError(
            f"sample weights for an MLP need scikit-learn >= 1.7 (installed: {sklearn.__version__})"
        )
    return model._backprop(X, Y, activations, deltas, coef_grads, intercept_grads)


def mlp_label_binarizer(model: Any, classes: np.ndarray) -> None:
    """Give an MLP classifier the classes of all ranks, as its ``fit`` would from all rows. Local.

    scikit-learn keeps a fitted ``LabelBinarizer`` in ``_label_binarizer``
    (used by ``predict`` and to choose the output activation).
    """
    from sklearn.preprocessing import LabelBinarizer

    model._label_binarizer = LabelBinarizer().fit(classes)
    model.classes_ = model._label_binarizer.classes_


# ----------------------------------------------------------------------------
# Bridged: the private fitted state of scikit-learn's stacking estimators
#
# mpitrain builds a fitted StackingClassifier/StackingRegressor from members
# fitted across ranks.  Besides its public attributes, scikit-learn's ``fit``
# leaves a fitted LabelEncoder that ``predict`` uses to map the final
# estimator's class indices back to the labels (``_label_encoder``), and the
# meta-features of each member that ``get_feature_names_out`` reads
# (``_n_feature_outs``).  Their names are checked once against the installed
# release's own fit on four rows.

_STACKING_PRIVATE = ("_label_encoder", "_n_feature_outs")


@functools.cache
def _check_stacking_state() -> None:
    """Check that scikit-learn's stacking ``fit`` leaves the known private attributes. Local."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import StackingClassifier

    fitted = StackingClassifier([("d", DummyClassifier())], cv=2).fit(
        np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1])
    )
    missing = [name for name in _STACKING_PRIVATE if not hasattr(fitted, name)]
    if missing:  # pragma: no cover - a newer release changed it
        raise ImportError(
            f"mpitrain sets scikit-learn's private stacking state ({', '.join(missing)}), "
            f"which scikit-learn {sklearn.__version__} does not keep; mpitrain supports "
            f"scikit-learn {_range(SKLEARN_SUPPORTED)}"
        )


def set_stacking_state(
    model: Any, classes: np.ndarray | None, n_feature_outs: Sequence[int]
) -> None:
    """Give a stacking model the private state scikit-learn's ``fit`` leaves. Local.

    ``classes``: the classifier's labels (its label encoder is fitted on
    them and ``classes_`` set); ``None`` for a regressor.
    ``n_feature_outs``: the meta-features each kept member gives.
    """
    _check_stacking_state()
    if classes is not None:
        from sklearn.preprocessing import LabelEncoder

        model._label_encoder = LabelEncoder().fit(classes)
        model.classes_ = model._label_encoder.classes_
    model._n_feature_outs = [int(n) for n in n_feature_outs]
