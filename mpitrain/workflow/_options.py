"""What ``train`` is asked to do: the model table and the options, checked.

Light to import (no scikit-learn, no MPI): the command line takes its
``--model`` choices from :data:`MODELS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mpitrain.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "MODELS",
    "UNSUPERVISED",
    "SHORTCUTS",
    "ROWS_MEMORY_COPIES",
    "DEFAULT_ROWS_MEMORY_COPIES",
    "CHECKPOINT_SECONDS",
    "TrainOptions",
    "model_class",
    "make_estimator",
    "ENSEMBLES",
    "member_estimators",
]

#: ``model`` name: (module, class, how it learns).  "statistics" models are
#: exact from reduced sufficient statistics and stream their rows; "rows"
#: models need their rows in memory (iterative solvers, local fits).
MODELS = {
    "linear": ("mpitrain.linear_model", "LinearRegression", "statistics"),
    "polynomial": ("mpitrain.linear_model", "PolynomialRegression", "statistics"),
    "ridge": ("mpitrain.linear_model", "Ridge", "statistics"),
    "lasso": ("mpitrain.linear_model", "Lasso", "statistics"),
    "elasticnet": ("mpitrain.linear_model", "ElasticNet", "statistics"),
    "logistic": ("mpitrain.linear_model", "LogisticRegression", "rows"),
    "linear-svc": ("mpitrain.linear_model", "LinearSVC", "rows"),
    # SGDClassifier for integer or text labels, SGDRegressor for a float target.
    "sgd": ("mpitrain.linear_model", None, "rows"),
    "svc": ("mpitrain.svm", "SVC", "rows"),
    "svr": ("mpitrain.svm", "SVR", "rows"),
    # Without a target (no --y): PCA streams its covariance, k-means holds its rows.
    "pca": ("mpitrain.decomposition", "PCA", "statistics"),
    "kmeans": ("mpitrain.cluster", "KMeans", "rows"),
    # MLPClassifier for integer or text labels, MLPRegressor for a float target.
    "mlp": ("mpitrain.neural_network", None, "rows"),
    # A forest classifier for integer or text labels, a forest regressor for a float target.
    "random-forest": (
        "mpitrain.ensemble",
        ("RandomForestClassifier", "RandomForestRegressor"),
        "rows",
    ),
    "extra-trees": (
        "mpitrain.ensemble",
        ("ExtraTreesClassifier", "ExtraTreesRegressor"),
        "rows",
    ),
    # XGBClassifier for labels 0 .. K-1, XGBRegressor for a float target.
    "gradient-boosting": (
        "mpitrain.ensemble",
        ("XGBClassifier", "XGBRegressor"),
        "rows",
    ),
    # Models of different kinds combined (--members): classifiers for labels, else regressors.
    "voting": ("mpitrain.ensemble", ("VotingClassifier", "VotingRegressor"), "rows"),
    "stacking": (
        "mpitrain.ensemble",
        ("StackingClassifier", "StackingRegressor"),
        "rows",
    ),
}

#: Models that combine the models named by ``members`` (``--members``).
ENSEMBLES = frozenset({"voting", "stacking"})

#: Models that learn without a target: ``train`` reads no ``y`` for them
#: and ``predict`` writes their ``transform`` (PCA) or cluster labels.
UNSUPERVISED = frozenset({"pca", "kmeans"})

#: Float64 copies of its rows that a model holding them in memory keeps at
#: its peak, counting the rows as read: the kernel SVMs keep the validated
#: rows, the packed ``[X | duals | label | weight | id]`` block and the contiguous
#: copy handed to libsvm (whose own per-row arrays are small), plus the
#: kernel cache (``cache_size`` MB, added apart).  Other models: the rows,
#: scikit-learn's validated float64 copy, and one working copy of the local
#: solver (liblinear's sparse copy, ridge's centred rows).
ROWS_MEMORY_COPIES = {"svc": 4.0, "svr": 4.0}
DEFAULT_ROWS_MEMORY_COPIES = 3.0

#: Typed shortcuts for common hyperparameters: option -> parameter name.
SHORTCUTS = {
    "alpha": "alpha",
    "degree": "degree",
    "l1_ratio": "l1_ratio",
    "C": "C",
    "kernel": "kernel",
    "gamma": "gamma",
    "arity": "arity",
    "max_passes": "max_passes",
    "engine": "engine",
    "refit_solver": "refit_solver",
}

#: Default ``checkpoint_seconds``: a hard kill loses at most this much work.
CHECKPOINT_SECONDS = 600.0


@dataclasses.dataclass
class TrainOptions:
    """The options of :func:`mpitrain.workflow.train`: those of ``mpitrain train``.

    Making it checks what needs no data and no MPI (the model name, options
    that need another); the model's own parameters are checked by
    :func:`make_estimator`.  Raises :class:`mpitrain.errors.UsageError`.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns, read as one row space (``DATA``).
    model : str
        A key of :data:`MODELS` (``--model``).
    out : str or path
        Where the fitted model is saved with skops (``--out``).
    alpha, degree, l1_ratio, C, kernel, gamma, arity, max_passes, engine, refit_solver : default=None
        Shortcuts for the model's hyperparameters of these names; ``None``
        keeps the model's default (``--alpha`` ...).
    params : mapping or iterable of (name, value), default=None
        Any other hyperparameter of the model (``--param NAME=VALUE``).
    x, y : str, default="X", "y"
        Feature and target datasets (``--x``, ``--y``).
    sample_weight : str or None, default=None
        Dataset of row weights (``--sample-weight``).
    report : str or None, default=None
        Where to write the JSON run report (``--report``).
    strategy : {"exact", "average", "cascade"} or None, default=None
        ``--strategy``; ``None``: the model's default.
    rounds : int or None, default=None
        Averaging rounds of ``model="sgd"`` (``--rounds``).
    compare : bool, default=False
        Fit with both strategies and report the gap (``--compare``).
    drop_missing : bool, default=False
        Drop rows with a missing feature or target (``--drop-missing``).
    impute : {"mean", "median", "most_frequent"} or None, default=None
        Fill missing features with a global statistic; the saved model
        imputes too (``--impute``).
    test_size : float or int or None, default=None
        Share (0 < F < 1) or count of rows held out for testing (``--test-size``).
    cv : int or None, default=None
        K-fold cross-validation on the training rows (``--cv``).
    seed : int, default=0
        Seed of ``test_size`` and ``cv`` (``--seed``).
    plots : str or None, default=None
        Folder for PNG plots (``--plots``).
    checkpoint : str or None, default=None
        Checkpoint file of the fit's iterations (``--checkpoint``).
    checkpoint_every : int or None, default=None
        Save after every N iterations (``--checkpoint-every``).
    checkpoint_seconds : float or None, default=None
        Save when this many seconds passed since the last save; ``None``:
        :data:`CHECKPOINT_SECONDS`; 0: never by time (``--checkpoint-seconds``).
    resume : bool, default=False
        Continue from ``checkpoint`` if it exists (``--resume``).
    shuffle : int or None, default=None
        Seed of a permutation of the rows across the ranks after reading,
        before anything else (``--shuffle [SEED]``): every rank's slice is
        then distributed like the whole, as when training on the parts of
        ``mpitrain shuffle`` with the same seed.  For models that hold
        their rows.
    members : str or sequence of str, default=None
        The models that ``model="voting"`` or ``"stacking"`` combines: keys
        of :data:`MODELS`, comma-separated or a list (``--members``); each
        with its default parameters, changed by ``params`` as
        ``NAME__PARAM`` with ``_`` for ``-`` in the name
        (``--param random_forest__n_estimators=50``).
    root_share : float or None, default=None
        Rank 0 reads ``root_share`` (0 to 1) times the rows of each other
        rank (:func:`mpitrain.data.row_range`), for the work it does alone
        (``--root-share``).  ``None``: for models fitted from streamed
        statistics, balanced by the data's size and the rank count
        (:func:`mpitrain.workflow.default_root_share`); 1 for the others.
    """

    data: str | os.PathLike | Sequence[str | os.PathLike]
    model: str
    out: str | os.PathLike
    alpha: float | None = None
    degree: int | None = None
    l1_ratio: float | None = None
    C: float | None = None
    kernel: str | None = None
    gamma: str | float | None = None
    arity: int | None = None
    max_passes: int | None = None
    engine: str | None = None
    refit_solver: str | None = None
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None
    x: str = "X"
    y: str = "y"
    sample_weight: str | None = None
    report: str | os.PathLike | None = None
    strategy: str | None = None
    rounds: int | None = None
    compare: bool = False
    drop_missing: bool = False
    impute: str | None = None
    test_size: float | int | None = None
    cv: int | None = None
    seed: int = 0
    plots: str | os.PathLike | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    resume: bool = False
    shuffle: int | None = None
    members: str | Sequence[str] | None = None
    root_share: float | None = None

    def __post_init__(self) -> None:
        if self.root_share is not None:
            from mpitrain.data import check_root_share

            try:
                self.root_share = check_root_share(self.root_share)
            except ValueError as exc:
                raise UsageError(f"--root-share: {exc}") from None
        if self.model not in MODELS:
            raise UsageError(
                f"unknown model {self.model!r}; choose from {', '.join(sorted(MODELS))}"
            )
        # One file as given; several files and patterns stay a list (one row space).
        if not isinstance(self.data, (str, os.PathLike)):
            self.data = list(self.data)
            if len(self.data) == 1:
                self.data = self.data[0]
        self.params = dict(self.params or {})
        if self.model in UNSUPERVISED:
            self._check_unsupervised()
        if self.shuffle is not None and not self.rows_in_memory:
            raise UsageError(
                f"--shuffle: --model {self.model} learns exactly from sums over the rows, "
                "which their order across the ranks does not change; shuffling applies to "
                "models that hold their rows (or --strategy average)"
            )
        self._check_members()
        if self.drop_missing and self.impute:
            # Dropped first, the rows leave nothing to impute: the flag would do nothing.
            raise UsageError(
                "--drop-missing drops every row that --impute would fill; give one"
            )
        if self.checkpoint is None:
            for flag, value in (
                ("--resume", self.resume),
                ("--checkpoint-every", self.checkpoint_every),
                ("--checkpoint-seconds", self.checkpoint_seconds),
            ):
                if value:
                    raise UsageError(f"{flag} needs --checkpoint PATH")

    def _check_members(self) -> None:
        """``members`` for voting and stacking only: known supervised models, listed once."""
        if self.members is None or self.members == []:
            self.members = None
            if self.model in ENSEMBLES:
                raise UsageError(
                    f"--model {self.model} needs --members, e.g. --members logistic,random-forest"
                )
            return
        if self.model not in ENSEMBLES:
            raise UsageError(
                f"--members applies to --model {' or '.join(sorted(ENSEMBLES))} only"
            )
        names = self.members
        if isinstance(names, str):
            names = names.split(",")
        self.members = [name.strip() for name in names if name.strip()]
        refused = [
            name
            for name in self.members
            if name not in MODELS or name in UNSUPERVISED or name in ENSEMBLES
        ]
        if refused or not self.members:
            choices = sorted(set(MODELS) - UNSUPERVISED - ENSEMBLES)
            raise UsageError(
                f"--members {','.join(refused) or '(none)'}: choose models from "
                f"{', '.join(choices)}"
            )

    def _check_unsupervised(self) -> None:
        """No target for PCA and k-means: ``y`` is not read; refuse options that score one."""
        self.y = None
        for flag, value in (
            ("--test-size", self.test_size),
            ("--cv", self.cv),
            ("--compare", self.compare),
            ("--plots", self.plots),
        ):
            if value:
                raise UsageError(
                    f"{flag} scores predictions of a target; --model {self.model} has none "
                    "(see 'mpitrain describe --pca K' for plots)"
                )
        if self.model == "pca" and self.sample_weight is not None:
            raise UsageError("--sample-weight: PCA takes no sample weights")

    @property
    def module(self) -> str:
        """The module of the model's class."""
        return MODELS[self.model][0]

    @property
    def learns_from(self) -> str:
        """``"statistics"`` (exact from streamed sums) or ``"rows"`` (rows in memory)."""
        return MODELS[self.model][2]

    @property
    def rows_in_memory(self) -> bool:
        """Whether the rows must be held in memory: the model, the strategy or an option needs them."""
        needed = self.compare or self.impute or self.test_size or self.cv or self.plots
        # --param strategy=... is the same request as --strategy.
        strategy = self.params.get("strategy", self.strategy)
        return bool(
            self.learns_from != "statistics"
            or strategy not in (None, "exact")
            or needed
        )


def model_class(options: TrainOptions | str, labels: bool | None = None) -> type:
    """The mpitrain estimator class of ``options.model`` (or of a model name). Local.

    ``labels``: the target holds classes (``model="sgd"`` picks
    SGDClassifier then, else SGDRegressor).  Imports the model's module.
    """
    model = options if isinstance(options, str) else options.model
    module, name, _ = MODELS[model]
    if name is None:  # sgd, mlp: by the kind of target
        family = model.upper()
        name = f"{family}Classifier" if labels else f"{family}Regressor"
    elif isinstance(name, tuple):  # (classifier, regressor): by the kind of target
        name = name[0] if labels else name[1]
    return getattr(importlib.import_module(module), name)


def make_estimator(
    options: TrainOptions,
    comm: Intracomm,
    *,
    strategy: str | None = None,
    labels: bool | None = None,
):
    """The mpitrain estimator the options describe, parameters validated. Local.

    Raises :class:`mpitrain.errors.UsageError` for an option the model does
    not take, and scikit-learn's parameter errors for a bad value.
    """
    cls = model_class(options, labels)
    members = None
    if options.model in ENSEMBLES:
        members = member_estimators(options, comm, labels=labels)
        # The members' parameters too, as NAME__PARAM.
        valid = set(cls(members).get_params(deep=True)) - {"comm"}
        valid -= {name for name in valid if name.endswith("__comm")}
    else:
        valid = set(cls().get_params()) - {"comm"}
    params: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for option, param in SHORTCUTS.items():
        value = getattr(options, option)
        if value is not None:
            flag = "--" + option.replace("_", "-")
            if param not in valid:
                raise UsageError(f"{flag} does not apply to --model {options.model}")
            params[param] = value
            flags[param] = flag
    for name, value in options.params.items():
        if name in flags:
            # Which one wins would be a guess: refuse both.
            raise UsageError(
                f"--param {name}={value!r} and {flags[name]} {params[name]!r} both "
                f"set {name}; give one"
            )
        if name not in valid:
            raise UsageError(
                f"--param {name}: {cls.__name__} has no parameter {name!r}; it has: {', '.join(sorted(valid))}"
            )
        params[name] = value
    strategy = strategy or options.strategy
    if strategy is not None:
        if "strategy" not in valid or (
            strategy == "exact" and cls().get_params()["strategy"] != "exact"
        ):
            raise UsageError(
                f"--strategy {strategy} is not available for --model {options.model}"
            )
        params["strategy"] = strategy
    if options.rounds is not None:
        if "rounds" not in valid:
            raise UsageError(
                f"--rounds applies to --model sgd only, not --model {options.model}"
            )
        params["rounds"] = options.rounds
    if members is None:
        estimator = cls(comm=comm, **params)
    else:
        estimator = cls(members, comm=comm).set_params(**params)
    # scikit-learn's own check of the values (its types and ranges), before any row is read.
    estimator._validate_params()
    return estimator


def member_estimators(
    options: TrainOptions, comm: Intracomm, *, labels: bool | None = None
) -> list[tuple[str, Any]]:
    """``(name, estimator)`` of each of ``options.members``, of the target's kind. Local.

    Classifiers for labels, regressors for a float target (as ``sgd``
    picks); a member of the other kind only is refused.  Each is named
    after its model with ``_`` for ``-`` (``random_forest``); a name listed
    twice gets a suffix (``ridge``, ``ridge_2``).
    """
    from sklearn.base import is_classifier, is_regressor

    kind, is_kind = (
        ("classifier", is_classifier) if labels else ("regressor", is_regressor)
    )
    out: list[tuple[str, Any]] = []
    for name in options.members or ():
        member = model_class(name, labels)(comm=comm)
        if not is_kind(member):
            raise UsageError(
                f"--members {name}: {type(member).__name__} is not a {kind}, and the target "
                f"{'holds class labels' if labels else 'is continuous'}"
            )
        taken = {n for n, _ in out}
        # Names that --param NAME__PARAM=VALUE can reach: identifiers.
        base = name.replace("-", "_")
        label, k = base, 1
        while label in taken:
            k += 1
            label = f"{base}_{k}"
        out.append((label, member))
    return out
