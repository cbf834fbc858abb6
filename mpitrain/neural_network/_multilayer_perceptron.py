"""Multilayer perceptrons across MPI ranks: scikit-learn's MLP, exact or averaged.

scikit-learn's ``MLPClassifier``/``MLPRegressor`` minimise the mean loss of
the rows plus ``alpha/(2n)·‖W‖²``.  The loss and its gradient are sums over
rows, so the ranks can follow scikit-learn's own iterates:

* ``solver="lbfgs"``, strategy ``exact``: rank 0 runs scipy's L-BFGS-B with
  scikit-learn's options; at each evaluation every rank runs scikit-learn's
  forward and backward pass on its own rows at rank 0's point and one
  reduction sums the losses and gradients
  (:func:`mpitrain.comm.minimize_on_root`).
* ``solver="adam"|"sgd"``, strategy ``exact`` (synchronous data parallel):
  the epoch's shuffle is scikit-learn's, drawn from the shared random state
  over *global* row ids, so minibatch ``k`` holds the very rows that
  scikit-learn's minibatch ``k`` holds on all rows together, whatever the
  number of ranks; each rank takes the ones it holds (on average a share
  proportional to its rows), one ``Allreduce`` sums the gradients, and every
  rank applies scikit-learn's own optimiser update.  Only the order of the
  summation differs from one process's fit.
* strategy ``average``: every rank trains on its own rows (local epochs or
  L-BFGS iterations, with ``alpha`` scaled to its share), then the weights
  are averaged by weight, ``rounds`` times.  An approximation: see
  ``docs/neural-networks.md``.

The module has two layers: pure functions on flat parameter vectors
(:func:`layer_units`, :func:`pack`, :func:`unpack_into`, :func:`local_sums`,
:func:`batch_objective`), and the estimators, which keep a plain
scikit-learn MLP (``estimator_``) shaped and initialised as scikit-learn's
``fit`` would do it, and run scikit-learn's private MLP code on it through
:mod:`mpitrain.utils.fixes`.
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn import neural_network as _sk_nn
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import gen_batches, shuffle

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    agree,
    allgatherv_array,
    allreduce_identical,
    allreduce_minmax,
    allreduce_sum,
    bcast_array,
    collective_check,
    minimize_on_root,
    self_comm,
)
from mpitrain.report import Progress
from mpitrain.utils.fixes import (
    Interval,
    StrOptions,
    check_optimize_result,
    mlp_backprop,
    mlp_initialize,
    mlp_label_binarizer,
    mlp_optimizers,
    mlp_sample_weight,
)
from mpitrain.utils.multiclass import agree_classes
from mpitrain.utils.random import agreed_random_state
from mpitrain.utils.validation import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "layer_units",
    "pack",
    "unpack_into",
    "squared_weight_norm",
    "local_sums",
    "batch_objective",
    "MLPClassifier",
    "MLPRegressor",
]

#: scipy's default ``ftol`` of L-BFGS-B, which scikit-learn's MLP keeps.
_LBFGS_FTOL = 1e7 * np.finfo(float).eps
#: Seconds between two progress lines on rank 0.
_PROGRESS_SECONDS = 10.0


# ----------------------------------------------------------------------------
# Pure math on flat parameter vectors (scikit-learn's packing: coefficients of
# every layer, then intercepts of every layer, each raveled in C order).


def layer_units(n_features: int, hidden_layer_sizes: Any, n_outputs: int) -> list[int]:
    """Units of every layer, input to output, as scikit-learn's ``_fit`` lists them. Pure."""
    hidden = hidden_layer_sizes
    if not hasattr(hidden, "__iter__"):
        hidden = [hidden]
    hidden = [int(h) for h in hidden]
    if any(h <= 0 for h in hidden):
        raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
    return [int(n_features), *hidden, int(n_outputs)]


def pack(coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> np.ndarray:
    """All weights in one float64 vector, in scikit-learn's order. Pure."""
    return np.concatenate([np.ravel(a) for a in (*coefs, *intercepts)]).astype(
        np.float64, copy=False
    )


def unpack_into(
    x: np.ndarray, coefs: list[np.ndarray], intercepts: list[np.ndarray]
) -> None:
    """Copy the flat vector ``x`` into the existing weight arrays, in place. Pure."""
    start = 0
    for a in (*coefs, *intercepts):
        a[...] = x[start : start + a.size].reshape(a.shape)
        start += a.size


def squared_weight_norm(coefs: list[np.ndarray]) -> float:
    """``‖W‖²`` of the coefficients (not intercepts), summed as scikit-learn sums it. Pure."""
    values = 0.0
    for s in coefs:
        s = s.ravel()
        values += np.dot(s, s)
    return float(values)


def local_sums(
    network: Any, X: Any, Y: np.ndarray, sample_weight: np.ndarray | None
) -> np.ndarray:
    """``[Σ loss, Σ weight, Σ gradient...]`` of some rows, at the network's weights.

    Runs scikit-learn's forward and backward pass (``_backprop``) on
    ``network``, whose ``alpha`` must be 0 (the penalty is added once, to
    the global sums, by :func:`batch_objective`), and turns its means into
    weighted sums.  Zero rows give zeros.  Local: no communication.

    Returns
    -------
    ndarray of shape (2 + n_weights,)
    """
    n_weights = sum(c.size for c in network.coefs_) + sum(
        b.size for b in network.intercepts_
    )
    out = np.zeros(2 + n_weights)
    if X.shape[0] == 0:
        return out
    weight = float(X.shape[0] if sample_weight is None else np.sum(sample_weight))
    if weight == 0:
        return out
    loss, coef_grads, intercept_grads = mlp_backprop(network, X, Y, sample_weight)
    out[0] = loss * weight
    out[1] = weight
    out[2:] = pack(coef_grads, intercept_grads) * weight
    return out


def batch_objective(
    sums: np.ndarray, coefs: list[np.ndarray], alpha: float
) -> tuple[float, np.ndarray]:
    """scikit-learn's loss and flat gradient from the global :func:`local_sums`. Pure.

    ``loss = Σ loss / W + ½ alpha ‖W‖² / W`` and ``grad = (Σ grad + alpha W) / W``
    (intercepts not penalised), ``W`` the rows' total weight, as
    scikit-learn's ``_backprop`` computes them for one batch.
    """
    weight = sums[1]
    loss = sums[0] / weight + (0.5 * alpha) * squared_weight_norm(coefs) / weight
    grad = sums[2:].copy()
    start = 0
    for c in coefs:
        grad[start : start + c.size] += alpha * c.ravel()
        start += c.size
    grad /= weight
    return float(loss), grad


def _split_like(flat: np.ndarray, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Views of ``flat`` shaped like ``arrays``. Pure."""
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


def _zero_alpha(model: Any) -> Any:
    """A shallow copy of ``model`` with ``alpha = 0``: it shares the weight arrays. Pure."""
    import copy

    network = copy.copy(model)
    network.alpha = 0.0
    return network


def _rng_state(rng: np.random.RandomState) -> list:
    """A RandomState's state as a list of plain values (for checkpoints). Pure."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [str(name), np.asarray(keys).copy(), int(pos), int(has_gauss), float(cached)]


class _RootProgress:
    """Loss lines on rank 0, at most one every ``_PROGRESS_SECONDS``, plus ``verbose``'s. Local."""

    def __init__(self, what: str, enabled: bool, verbose: Any = False):
        self.what = what
        self.verbose = bool(verbose) and enabled
        self.progress = Progress(enabled=enabled, interval=_PROGRESS_SECONDS)
        self.last = self.progress.elapsed()

    def __call__(self, unit: str, count: int, loss: float | None = None) -> None:
        # Rank 0 alone writes between collectives: a failed write (closed
        # stream, broken pipe) must not stop it alone, so the lines stop instead.
        try:
            if self.verbose and loss is not None:  # scikit-learn's own line
                print(f"Iteration {count}, loss = {loss:.8f}")
            now = self.progress.elapsed()
            if now - self.last >= _PROGRESS_SECONDS:
                self.last = now
                tail = "" if loss is None else f": loss {loss:.6g}"
                self.progress.line(f"{self.what} {unit} {count}{tail}")
        except (OSError, ValueError):
            self.verbose = False
            self.progress.enabled = False


# ----------------------------------------------------------------------------
# Synchronous data-parallel Adam and SGD


class _StochasticFit:
    """scikit-learn's ``_fit_stochastic`` with global minibatches. Collective over ``comm``.

    Every rank holds the same ``model`` (weights, optimiser, counters,
    random state) and applies the same updates; ``X`` are this rank's rows,
    global ids ``offset .. offset + n_local - 1`` of ``n_rows``.  With
    ``comm`` of one rank (the average strategy) it is scikit-learn's fit
    on that rank's rows.
    """

    def __init__(
        self,
        est: Any,
        model: Any,
        X: Any,
        Y: np.ndarray,
        y: np.ndarray | None,
        sample_weight: np.ndarray | None,
        comm: Intracomm,
        offset: int,
        n_rows: int,
        rng: np.random.RandomState,
        classifier: bool,
        y_index: np.ndarray | None,
        progress: _RootProgress,
    ):
        self.est, self.model, self.comm, self.rng = est, model, comm, rng
        self.classifier, self.progress = classifier, progress
        self.X, self.Y, self.y, self.sw = X, Y, y, sample_weight
        #: The penalty of the objective (the average strategy scales it per rank).
        self.alpha = est.alpha
        self.offset, self.n_rows = offset, n_rows
        self.stopped = False
        #: Steps taken and seconds in their Allreduce (this fit, this rank).
        self.steps = 0
        self.seconds = {"communicate": 0.0}
        Adam, SGD = mlp_optimizers()
        params = model.coefs_ + model.intercepts_
        if est.solver == "sgd":
            model._optimizer = SGD(
                params,
                est.learning_rate_init,
                est.learning_rate,
                est.momentum,
                est.nesterovs_momentum,
                est.power_t,
            )
        else:
            model._optimizer = Adam(
                params, est.learning_rate_init, est.beta_1, est.beta_2, est.epsilon
            )
        self.train_ids: np.ndarray | None = None
        self.val_local: np.ndarray | None = None
        if est.early_stopping:
            self._split_validation(y_index)
        n_train = n_rows if self.train_ids is None else self.train_ids.size
        self.n_train = n_train
        self.sample_idx = np.arange(n_train, dtype=int)
        if est.batch_size == "auto":
            self.batch_size = min(200, n_train)
        else:
            if est.batch_size > n_train:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped",
                    stacklevel=3,
                )
            self.batch_size = int(np.clip(est.batch_size, 1, n_train))
        self.network = _zero_alpha(model)
        self.model.n_iter_ = 0

    # -- the validation split, by global row id ---------------------------------

    def _split_validation(self, y_index: np.ndarray | None) -> None:
        """scikit-learn's ``train_test_split`` of the global row ids. Collective.

        A two-class classifier's split is stratified on the binarised labels
        of all rows, as scikit-learn stratifies it: every rank then needs
        every row's class (one ``Allgatherv`` of small integers).
        """
        est, model = self.est, self.model
        stratify = None
        # scikit-learn stratifies a classifier's split when it has one output
        # (two classes), not for more classes.
        if self.classifier and model.n_outputs_ == 1:
            every = allgatherv_array(y_index.astype(np.int32), self.comm)
            # As scikit-learn's: its targets are the binarised labels as booleans
            # (a 2-D stratify is split by the rows' text, so the dtype matters).
            stratify = model._label_binarizer.transform(model.classes_[every]).astype(
                bool
            )
        train, val = train_test_split(
            np.arange(self.n_rows),
            random_state=self.rng,
            test_size=est.validation_fraction,
            stratify=stratify,
        )
        if val.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' "
                "or the size of your dataset."
            )
        self.train_ids = train
        lo, hi = self.offset, self.offset + self.X.shape[0]
        self.val_local = np.sort(val[(val >= lo) & (val < hi)]) - lo

    def _validation_score(self) -> float:
        """Accuracy or R² of the validation rows of all ranks, as scikit-learn scores them. Collective."""
        idx = self.val_local
        X = self.X[idx]
        sw = None if self.sw is None else self.sw[idx]
        w = np.ones(idx.size) if sw is None else sw
        if self.classifier:
            buf = np.zeros(2)
            if idx.size:
                pred = self.model.predict(X)
                buf[:] = (w * (pred == self.y[idx])).sum(), w.sum()
            allreduce_sum(buf, self.comm)
            return float(buf[0] / buf[1])
        # R², averaged over outputs: the weighted mean first, then the sums of squares.
        Y = self.Y[idx]
        k = Y.shape[1]
        pred = self.model.predict(X).reshape(-1, k) if idx.size else np.zeros((0, k))
        first = np.concatenate(
            [
                [w.sum(), float((~np.isfinite(pred)).sum())],
                w @ Y if idx.size else np.zeros(k),
            ]
        )
        allreduce_sum(first, self.comm)
        if first[1] > 0:
            return float("nan")
        mean = first[2:] / first[0]
        second = np.zeros(2 * k)
        if idx.size:
            second[:k] = w @ (Y - pred) ** 2
            second[k:] = w @ (Y - mean) ** 2
        allreduce_sum(second, self.comm)
        num, den = second[:k], second[k:]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(den != 0, 1 - num / np.where(den != 0, den, 1), 0.0)
        r2 = np.where((den == 0) & (num == 0), 1.0, r2)
        return float(np.mean(r2))

    # -- epochs ----------------------------------------------------------------------

    def run(self, epochs: int, loop: Any = None) -> None:
        """Up to ``epochs`` more epochs (fewer if the stopping rule ends the fit). Collective."""
        est, model, comm = self.est, self.model, self.comm
        params = model.coefs_ + model.intercepts_
        lo, hi = self.offset, self.offset + self.X.shape[0]
        weighted = self.sw is not None
        n_weights = sum(p.size for p in params)
        for _ in range(epochs):
            if self.stopped:
                return
            if est.shuffle:
                self.sample_idx = shuffle(self.sample_idx, random_state=self.rng)
            order = (
                self.sample_idx
                if self.train_ids is None
                else self.train_ids[self.sample_idx]
            )
            mine = (order >= lo) & (order < hi)
            accumulated = 0.0
            for batch in gen_batches(self.n_train, self.batch_size):
                ids = order[batch]
                local = ids[mine[batch]] - lo
                # The sums, then a failure flag: a rank whose step failed is
                # known to all after the step's one Allreduce, at no extra cost.
                failure = None
                try:
                    sums = local_sums(
                        self.network,
                        self.X[local],
                        self.Y[local],
                        self.sw[local] if weighted else None,
                    )
                    sums = np.append(sums, 0.0)
                except Exception as exc:
                    failure = exc
                    sums = np.zeros(3 + n_weights)
                    sums[-1] = 1.0
                tic = time.perf_counter()
                allreduce_sum(sums, comm)  # the one collective of a step
                self.seconds["communicate"] += time.perf_counter() - tic
                self.steps += 1
                if sums[-1] > 0:
                    agree(failure, comm, "computing a minibatch's gradient")
                sums = sums[:-1]
                batch_loss, grad = batch_objective(sums, model.coefs_, self.alpha)
                accumulated += batch_loss * (batch.stop - batch.start)
                model._optimizer.update_params(params, _split_like(grad, params))
            # rank 0's numbers decide, so that every rank takes the same branch
            decided = np.array(
                [
                    accumulated / self.n_train,
                    self._validation_score() if est.early_stopping else 0.0,
                ]
            )
            loss, score = bcast_array(decided, comm)
            model.n_iter_ += 1
            model.loss_ = float(loss)
            model.t_ += self.n_train
            model.loss_curve_.append(model.loss_)
            self.progress("epoch", model.n_iter_, model.loss_)
            self._update_no_improvement_count(float(score))
            model._optimizer.iteration_ends(model.t_)
            if model._no_improvement_count > est.n_iter_no_change:
                if est.early_stopping:
                    msg = (
                        "Validation score did not improve more than "
                        f"tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
                    )
                else:
                    msg = (
                        f"Training loss did not improve more than tol={est.tol:f}"
                        f" for {est.n_iter_no_change} consecutive epochs."
                    )
                verbose = est.verbose and comm.Get_rank() == 0
                if model._optimizer.trigger_stopping(msg, verbose):
                    self.stopped = True
                else:
                    model._no_improvement_count = 0
            if model.n_iter_ == est.max_iter:
                self.stopped = True
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) "
                    "reached and the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
            if loop is not None and not self.stopped:
                loop.step(self.state, iteration=model.n_iter_)

    def _update_no_improvement_count(self, score: float) -> None:
        """scikit-learn's stopping bookkeeping, from rank 0's loss and score. Local."""
        est, model = self.est, self.model
        if est.early_stopping:
            model.validation_scores_.append(score)
            if score < model.best_validation_score_ + est.tol:
                model._no_improvement_count += 1
            else:
                model._no_improvement_count = 0
            if score > model.best_validation_score_:
                model.best_validation_score_ = score
                model._best_coefs = [c.copy() for c in model.coefs_]
                model._best_intercepts = [i.copy() for i in model.intercepts_]
        else:
            if model.loss_curve_[-1] > model.best_loss_ - est.tol:
                model._no_improvement_count += 1
            else:
                model._no_improvement_count = 0
            if model.loss_curve_[-1] < model.best_loss_:
                model.best_loss_ = model.loss_curve_[-1]

    def finish(self) -> None:
        """Restore the best weights of early stopping, as scikit-learn does. Local."""
        model = self.model
        if self.est.early_stopping:
            unpack_into(
                pack(model._best_coefs, model._best_intercepts),
                model.coefs_,
                model.intercepts_,
            )

    # -- checkpoint state: arrays, scalars and lists only -------------------------

    def state(self) -> dict:
        """Everything the next epoch depends on. Local."""
        model, opt = self.model, self.model._optimizer
        if self.est.solver == "adam":
            optimizer = {
                "t": int(opt.t),
                "ms": [m.copy() for m in opt.ms],
                "vs": [v.copy() for v in opt.vs],
            }
        else:
            optimizer = {"velocities": [v.copy() for v in opt.velocities]}
        optimizer["learning_rate"] = float(opt.learning_rate)
        return {
            "weights": pack(model.coefs_, model.intercepts_),
            "optimizer": optimizer,
            "rng": _rng_state(self.rng),
            "sample_idx": self.sample_idx.copy(),
            "n_iter": int(model.n_iter_),
            "t": int(model.t_),
            "loss": float(getattr(model, "loss_", np.nan)),
            "loss_curve": list(model.loss_curve_),
            "no_improvement": int(model._no_improvement_count),
            "best_loss": None if model.best_loss_ is None else float(model.best_loss_),
            "validation_scores": None
            if model.validation_scores_ is None
            else list(model.validation_scores_),
            "best_validation_score": None
            if model.best_validation_score_ is None
            else float(model.best_validation_score_),
            "best_weights": pack(model._best_coefs, model._best_intercepts),
            "stopped": bool(self.stopped),
        }

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`'s dict. Local."""
        model, opt = self.model, self.model._optimizer
        unpack_into(state["weights"], model.coefs_, model.intercepts_)
        if self.est.solver == "adam":
            opt.t = int(state["optimizer"]["t"])
            opt.ms = [np.array(m) for m in state["optimizer"]["ms"]]
            opt.vs = [np.array(v) for v in state["optimizer"]["vs"]]
        else:
            opt.velocities = [np.array(v) for v in state["optimizer"]["velocities"]]
        opt.learning_rate = float(state["optimizer"]["learning_rate"])
        self.rng.set_state(tuple(state["rng"]))
        self.sample_idx = np.array(state["sample_idx"])
        model.n_iter_, model.t_ = int(state["n_iter"]), int(state["t"])
        if not np.isnan(state["loss"]):
            model.loss_ = float(state["loss"])
        model.loss_curve_ = list(state["loss_curve"])
        model._no_improvement_count = int(state["no_improvement"])
        model.best_loss_ = state["best_loss"]
        model.validation_scores_ = (
            None
            if state["validation_scores"] is None
            else list(state["validation_scores"])
        )
        model.best_validation_score_ = state["best_validation_score"]
        model._best_coefs = [c.copy() for c in model.coefs_]
        model._best_intercepts = [b.copy() for b in model.intercepts_]
        unpack_into(state["best_weights"], model._best_coefs, model._best_intercepts)
        self.stopped = bool(state["stopped"])


# ----------------------------------------------------------------------------
# Estimators


class _DistributedMLP(DistributedEstimator):
    """Shared fit of :class:`MLPClassifier` and :class:`MLPRegressor` (prediction: the base's)."""

    _own_params = ("comm", "strategy", "rounds")
    _x_checks = {"accept_sparse": "csr", "dtype": FLOAT_DTYPES}
    _classifier = False

    def _check_params(self) -> None:
        layer_units(
            1, self.hidden_layer_sizes, 1
        )  # scikit-learn's error for sizes <= 0
        if self.warm_start:
            raise ValueError(
                f"mpitrain.{type(self).__name__} does not support warm_start=True"
            )

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows; the network is the one for all ranks' rows.

        Collective over ``comm``: every rank calls it with its own rows
        (possibly none) and the same parameters.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,) or (n_local_rows, n_outputs)
        sample_weight : array-like of shape (n_local_rows,), default=None
            Needs scikit-learn >= 1.7.

        Returns
        -------
        self : object
        """
        tic = time.perf_counter()
        self.timings_ = {}
        with self._fitting(X, y, sample_weight) as fit:
            lib = fit.comm
            X = fit.X.astype(np.float64, copy=False)
            sw = fit.sample_weight
            if fit.rows.weighted and not mlp_sample_weight():
                raise ValueError(
                    "sample weights for an MLP need scikit-learn >= 1.7 (its MLP takes them)"
                )
            y = np.asarray(fit.y)
            y_index = None
            if self._classifier:
                agreed = agree_classes(
                    y, np.ones(y.shape[0]) if sw is None else sw, lib
                )
                classes, y_index = agreed.classes, agreed.index(y)
                n_outputs = 1 if len(classes) <= 2 else len(classes)
            else:
                classes = None
                local_outputs = 1 if y.ndim == 1 else y.shape[1]
                _, top = allreduce_minmax(np.array([local_outputs]), lib)
                n_outputs = int(top[0])
            rng = agreed_random_state(self.random_state, lib)
            model = self._unfitted_estimator()
            model.n_features_in_ = self.n_features_in_
            if hasattr(self, "feature_names_in_"):
                model.feature_names_in_ = self.feature_names_in_
            if classes is not None:
                mlp_label_binarizer(model, classes)
            units = layer_units(X.shape[1], self.hidden_layer_sizes, n_outputs)
            mlp_initialize(model, n_outputs, units, rng)
            # rank 0's initial weights, bit-identical everywhere
            start = bcast_array(pack(model.coefs_, model.intercepts_), lib)
            unpack_into(start, model.coefs_, model.intercepts_)
            model._best_coefs = [c.copy() for c in model.coefs_]
            model._best_intercepts = [b.copy() for b in model.intercepts_]
            Y = self._targets(model, y, n_outputs)
            offset = fit.rows.offset
            progress = _RootProgress(
                type(self).__name__, lib.Get_rank() == 0, self.verbose
            )
            key = {"layers": units, "rows": fit.rows.n_rows, "classes": classes}
            if self.strategy == "exact" and self.solver == "lbfgs":
                self._fit_lbfgs(model, X, Y, sw, lib, progress, key=key)
            elif self.strategy == "exact":
                run = _StochasticFit(
                    self,
                    model,
                    X,
                    Y,
                    y,
                    sw,
                    lib,
                    offset,
                    fit.rows.n_rows,
                    rng,
                    self._classifier,
                    y_index,
                    progress,
                )
                loop = self._loop(lib, key, "all", "epoch")
                if loop is not None and loop.resumed:
                    run.restore(loop.state)
                run.run(self.max_iter - model.n_iter_, loop)
                run.finish()
                self.timings_["communicate"] = run.seconds["communicate"]
                self.n_steps_ = run.steps
                # rank 0's weights, bit-identical everywhere
                final = bcast_array(pack(model.coefs_, model.intercepts_), lib)
                unpack_into(final, model.coefs_, model.intercepts_)
            else:
                self.averaging_ = self._fit_average(
                    model,
                    X,
                    Y,
                    y,
                    sw,
                    fit.rows.weight,
                    lib,
                    rng,
                    y_index,
                    progress,
                    key,
                )
            if not all(
                np.isfinite(w).all() for w in (*model.coefs_, *model.intercepts_)
            ):
                raise ValueError(
                    "Solver produced non-finite parameter weights. The input data may"
                    " contain large values and need to be preprocessed."
                )
            self.n_rows_ = fit.rows.n_rows
        self.estimator_ = model
        for name in (
            "classes_",
            "loss_",
            "best_loss_",
            "loss_curve_",
            "validation_scores_",
            "best_validation_score_",
            "t_",
            "coefs_",
            "intercepts_",
            "n_iter_",
            "n_layers_",
            "n_outputs_",
            "out_activation_",
        ):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        self.timings_["fit"] = time.perf_counter() - tic
        return self

    # -- pieces of fit --------------------------------------------------------------

    def _targets(self, model: Any, y: np.ndarray, n_outputs: int) -> np.ndarray:
        """This rank's targets as the network's outputs (binarised labels, or 2-D values). Local."""
        if self._classifier:
            if y.shape[0] == 0:
                return np.zeros((0, n_outputs), dtype=bool)
            return model._label_binarizer.transform(y).astype(bool)
        y = y.astype(np.float64, copy=False)
        return y.reshape(-1, n_outputs) if y.ndim == 1 else y

    def _loop(self, lib: Intracomm, key: dict, mode: str, unit: str):
        """The checkpoint loop of this fit inside a checkpointing context, else ``None``. Collective.

        ``key``: the layers, the rows and the classes of the problem.
        """
        from mpitrain.checkpoint import checkpoint_loop

        return checkpoint_loop(
            "mlp",
            key={
                "estimator": type(self).__name__,
                "params": self._sklearn_params(),
                "strategy": self.strategy,
                "rounds": self.rounds,
                **key,
            },
            comm=lib,
            mode=mode,
            what=f"{type(self).__name__} {self.solver}",
            unit=unit,
        )

    def _fit_lbfgs(
        self,
        model: Any,
        X: Any,
        Y: np.ndarray,
        sw: np.ndarray | None,
        lib: Intracomm,
        progress: _RootProgress,
        *,
        key: dict,
        max_iter: int | None = None,
        alpha: float | None = None,
        local_fit: bool = False,
    ) -> None:
        """scikit-learn's ``_fit_lbfgs`` with rank 0's L-BFGS-B over all ranks' rows. Collective over ``lib``."""
        from mpitrain.optimize import lbfgsb

        max_iter = self.max_iter if max_iter is None else max_iter
        alpha = self.alpha if alpha is None else alpha
        network = _zero_alpha(model)
        x0 = pack(model.coefs_, model.intercepts_)

        def evaluate_local(x: np.ndarray) -> np.ndarray:
            unpack_into(x, model.coefs_, model.intercepts_)
            return local_sums(network, X, Y, sw)

        def minimize(summed, start, iteration_done=None):  # rank 0 only
            count = [0]
            last = [np.nan]

            def objective(x):
                sums = summed(x)
                unpack_into(x, model.coefs_, model.intercepts_)
                f, g = batch_objective(sums, model.coefs_, alpha)
                last[0] = f
                return f, g

            def done(snapshot):
                count[0] += 1
                progress("iteration", count[0], last[0])
                if iteration_done is not None:
                    iteration_done(snapshot)

            return lbfgsb(
                objective,
                start,
                gtol=self.tol,
                ftol=_LBFGS_FTOL,
                maxiter=max_iter,
                maxfun=self.max_fun,
                resume=loop.state if loop is not None else None,
                iteration_done=done,
            )

        loop = None if local_fit else self._loop(lib, key, "root", "iteration")
        result = minimize_on_root(
            evaluate_local,
            x0,
            lib,
            minimize,
            n_sums=2 + x0.size,
            what="evaluating the loss",
            at_iteration=None if loop is None else loop.step,
        )
        unpack_into(result.x, model.coefs_, model.intercepts_)
        if local_fit:  # one round of the average strategy: no warning per round
            model.n_iter_ = getattr(model, "n_iter_", 0) + min(
                int(result.nit), max_iter
            )
        else:
            model.n_iter_ = check_optimize_result("lbfgs", result, max_iter)
        model.loss_ = float(result.fun)
        self.timings_.update(result.seconds)
        self.n_evaluations_ = result.n_evaluations

    def _fit_average(
        self,
        model: Any,
        X: Any,
        Y: np.ndarray,
        y: np.ndarray,
        sw: np.ndarray | None,
        total: float,
        lib: Intracomm,
        rng: np.random.RandomState,
        y_index: np.ndarray | None,
        progress: _RootProgress,
        key: dict,
    ) -> dict:
        """Local training on every rank, weights averaged by weight, ``rounds`` times. Collective over ``lib``.

        Each rank trains from the same start with ``alpha`` scaled by its
        share of the weight (``alpha · W_r / W``, so the penalty per row is
        the global one) for ``max(1, max_iter // rounds)`` epochs (adam,
        sgd) or iterations (lbfgs) per round; ranks without rows train
        nothing and weigh 0.  ``total``: the weight of all ranks' rows, as
        the fit's preamble agreed it (the same on every rank).
        """
        weight = float(X.shape[0] if sw is None else np.sum(sw))
        share = weight / total
        per_round = max(1, self.max_iter // self.rounds)
        local = self_comm()
        run = None
        quiet = _RootProgress(type(self).__name__, False)
        # Agreed: this rank's own validation split can fail (too few rows) on it alone.
        with collective_check(lib, "preparing training on this rank's rows"):
            if self.solver != "lbfgs" and weight > 0:
                run = _StochasticFit(
                    self,
                    model,
                    X,
                    Y,
                    y,
                    sw,
                    local,
                    0,
                    X.shape[0],
                    rng,
                    self._classifier,
                    y_index,
                    quiet,
                )
                run.alpha = self.alpha * share
        loop = self._loop(lib, key, "per_rank", "round")
        first = 0
        if loop is not None and loop.resumed:
            first = loop.iteration
            state = loop.state
            if run is not None:
                run.restore(state["run"])
            unpack_into(state["weights"], model.coefs_, model.intercepts_)
        # The loss of the averaged network on all rows after each round.
        curve: list[float] = [] if first == 0 else list(loop.state["curve"])
        for round_index in range(first, self.rounds):
            with collective_check(lib, "training on this rank's rows"):
                if weight > 0 and self.solver == "lbfgs":
                    self._fit_lbfgs(
                        model,
                        X,
                        Y,
                        sw,
                        local,
                        quiet,
                        key=key,
                        max_iter=per_round,
                        alpha=self.alpha * share,
                        local_fit=True,
                    )
                elif run is not None:
                    with warnings.catch_warnings():
                        # a round's epochs end before max_iter by design
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        run.run(per_round)
            buf = np.append(pack(model.coefs_, model.intercepts_) * weight, weight)
            allreduce_identical(buf, lib)
            unpack_into(buf[:-1] / buf[-1], model.coefs_, model.intercepts_)
            # scikit-learn's loss of the averaged network, over all rows
            sums = local_sums(_zero_alpha(model), X, Y, sw)
            allreduce_identical(sums, lib)
            curve.append(batch_objective(sums, model.coefs_, self.alpha)[0])
            progress("round", round_index + 1, curve[-1])
            if loop is not None and round_index + 1 < self.rounds:
                loop.step(
                    lambda: {
                        "run": None if run is None else run.state(),
                        "weights": pack(model.coefs_, model.intercepts_),
                        "curve": list(curve),
                    },
                    iteration=round_index + 1,
                )
        model.loss_ = curve[-1]
        model.n_iter_ = int(
            allreduce_minmax(np.array([getattr(model, "n_iter_", 0)]), lib)[1][0]
        )
        if self.solver != "lbfgs":  # per round here, not per epoch
            model.loss_curve_ = list(curve)
            model.best_loss_ = min(curve)
        return {
            "rounds": self.rounds,
            "per_round": per_round,
            "share": share,
            "loss_per_round": list(curve),
        }


_COMMON_CONSTRAINTS = {
    "strategy": [StrOptions({"exact", "average"})],
    "rounds": [Interval(Integral, 1, None, closed="left")],
    "comm": "no_validation",
}


class MLPClassifier(ClassifierMixin, _DistributedMLP):
    """Multilayer perceptron classifier over rows split across MPI ranks.

    :class:`sklearn.neural_network.MLPClassifier`'s parameters (same names,
    defaults and meanings), plus ``strategy``, ``rounds`` and ``comm``.
    Classes are the sorted union of every rank's labels; a rank with one
    class or none takes part.

    strategy : {"exact", "average"}, default="exact"
        "exact": scikit-learn's fit on all ranks' rows (``lbfgs``: rank 0's
        L-BFGS-B, one reduction per evaluation; ``adam``/``sgd``:
        scikit-learn's minibatches of global rows, one ``Allreduce`` per
        step).  "average": local training, weights averaged.
    rounds : int, default=1
        Averaging rounds of the "average" strategy (each of
        ``max(1, max_iter // rounds)`` local epochs or iterations).
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.

    Attributes
    ----------
    estimator_ : sklearn.neural_network.MLPClassifier
        The fitted network, identical on every rank.
    classes_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, coefs_, intercepts_, n_iter_, n_layers_,
    n_outputs_, out_activation_ : as on ``estimator_``, set as scikit-learn sets them
    n_rows_ : int
        Rows of all ranks together.
    timings_ : dict
        This rank's seconds: ``fit``; with lbfgs ``local_compute`` and
        ``communicate`` (broadcasts and reductions, with the wait for rank
        0's optimiser); with adam/sgd ``communicate`` (the steps' Allreduce).
    n_steps_ : int
        adam/sgd exact: optimiser steps (one Allreduce each).
    n_evaluations_ : int
        lbfgs: loss evaluations (one reduction each).
    averaging_ : dict
        The average strategy: ``rounds``, ``per_round`` (local epochs or
        iterations per round), this rank's ``share`` of the weight and
        ``loss_per_round`` (scikit-learn's loss of the averaged network on
        all rows after each round).  With adam/sgd, ``loss_curve_`` is that
        list (one value per round, not per epoch), ``best_loss_`` its
        minimum and ``n_iter_`` the most epochs any rank trained.
    """

    _sklearn_class = _sk_nn.MLPClassifier
    _parameter_constraints = {
        **_sk_nn.MLPClassifier._parameter_constraints,
        **_COMMON_CONSTRAINTS,
    }
    _target = "classes"
    _classifier = True

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        strategy="exact",
        rounds=1,
        comm=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.strategy = strategy
        self.rounds = rounds
        self.comm = comm


class MLPRegressor(RegressorMixin, _DistributedMLP):
    """Multilayer perceptron regressor over rows split across MPI ranks.

    :class:`sklearn.neural_network.MLPRegressor`'s parameters plus
    ``strategy``, ``rounds`` and ``comm`` (see :class:`MLPClassifier`).
    Several outputs are supported.  ``estimator_`` is a plain fitted
    :class:`sklearn.neural_network.MLPRegressor`.
    """

    _sklearn_class = _sk_nn.MLPRegressor
    _parameter_constraints = {
        **_sk_nn.MLPRegressor._parameter_constraints,
        **_COMMON_CONSTRAINTS,
    }
    _multi_output = True

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        strategy="exact",
        rounds=1,
        comm=None,
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.strategy = strategy
        self.rounds = rounds
        self.comm = comm
