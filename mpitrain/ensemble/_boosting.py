"""Gradient-boosted trees across ranks, on XGBoost's own collective.

XGBoost grows each tree from gradient histograms summed over all workers
(its Dask, Spark and Ray integrations work that way).  mpitrain does not
reimplement this: it starts XGBoost's collective from the MPI job.

1. Every rank checks its rows (the one check of :mod:`mpitrain.base`); the
   classes are agreed (:func:`mpitrain.utils.multiclass.agree_classes`), so
   every rank trains with the global number of classes even when it lacks
   some (they must be ``0 .. n_classes - 1``, as XGBoost's own classifier
   requires); with
   ``early_stopping_rounds`` the validation rows are chosen by global row id
   (:func:`mpitrain.model_selection.train_test_split_mask`), so they are the
   same at every rank count.
2. Rank 0 starts XGBoost's tracker (``xgboost.tracker.RabitTracker``) on an
   address every rank can reach (see :func:`tracker_host`), and broadcasts
   its ``worker_args()``.
3. Every rank joins inside ``xgboost.collective.CommunicatorContext`` (its
   task id is its MPI rank), builds a ``QuantileDMatrix`` of its own rows
   only (a rank without rows takes part with an empty one) and runs
   ``xgboost.train``: the quantile sketch, the histograms and the
   evaluation metrics are summed by XGBoost over all ranks, so every rank
   ends with the same booster.
4. Rank 0 waits for the tracker and frees it; every rank's outcome is
   agreed, so a failure on one rank (bad data, an exception inside
   training, no memory) ends the fit on every rank with one message that
   names the failing ranks.  What can fail in mpitrain's hands is agreed
   over MPI outside XGBoost's operations (the rows' copies before the
   collective, the callbacks at each round), so every rank leaves XGBoost
   together.  A rank that fails inside XGBoost's own code leaves first; it
   closes its sockets, which ends the others' pending operations (see
   :func:`train_across_ranks` for when it does not);
   ``collective_timeout`` bounds what is left (a rank that hangs).

The fitted ``estimator_`` is a plain ``xgboost.XGBClassifier`` or
``xgboost.XGBRegressor`` (the scikit-learn API), loaded from the trained
booster: it saves, loads and predicts without MPI.  As XGBoost's own
classifier does, the classifier takes the labels ``0 .. n_classes - 1``
(over all ranks: a rank may lack some), so that its plain model predicts
the labels themselves.

Rows larger than memory: :meth:`XGBClassifier.fit_reader` streams a rank's
rows from an :class:`mpitrain.data.RowReader`'s ring of blocks through
XGBoost's iterator interface (``xgboost.DataIter``) into a
``QuantileDMatrix``: XGBoost keeps only the quantised rows (one byte per
value with ``max_bin <= 256``), never the float rows.

Checkpoints: inside :func:`mpitrain.checkpoint.checkpointing`, the boosting
rounds are a checkpoint loop ("boosting", unit "round"): the booster is
saved as its raw UBJSON bytes in a ``uint8`` array, with the early-stopping
and evaluation history as plain values; a resumed fit continues with
XGBoost's own training continuation (``xgb_model=``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from mpitrain.base import DistributedEstimator
from mpitrain.checkpoint import CheckpointInterrupted, checkpoint_loop
from mpitrain.comm import (
    abort_job,
    agree,
    allgather_object,
    allreduce_minmax,
    bcast_object,
    collective_check,
    node_layout,
    quiet_barrier,
)
from mpitrain.errors import UsageError
from mpitrain.model_selection import train_test_split_mask
from mpitrain.utils.fixes import Interval, StrOptions
from mpitrain.utils.multiclass import agree_classes
from mpitrain.utils.threads import default_threads, threads_in_force
from mpitrain.utils.validation import FLOAT_DTYPES, agree_rows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

    from mpitrain.data import RowReader

__all__ = [
    "XGBClassifier",
    "XGBRegressor",
    "BoostingParameterError",
    "TRACKER_HOST_VARIABLE",
    "tracker_host",
    "booster_bytes",
    "booster_from_bytes",
]

#: Environment variable that names the tracker's address outright (an
#: interface of rank 0's node that every rank can reach).
TRACKER_HOST_VARIABLE = "MPITRAIN_TRACKER_HOST"

#: Tree methods that XGBoost runs across workers ("exact" does not).
_DISTRIBUTED_TREE_METHODS = (None, "hist", "approx", "auto")

#: Words of XGBoost's errors when a peer left its collective: such a rank
#: failed because another did, and the other's message is the one to show.
_PEER_LOST = (
    "allreduce failed",
    "allgather failed",
    "broadcast failed",
    "poll error",
    "poll timeout",
    "connection reset",
    "connection closed",
    "socket",
    "recv",
    # A rank that finished its part sees the failed one's closed socket when
    # it leaves the collective (XGBoost 3.x: "Failed to shutdown ... EOF").
    "encountered eof",
    "other end is likely closed",
    "failed to shutdown",
)


class BoostingParameterError(UsageError, ValueError, TypeError):
    """A parameter that XGBoost refuses, found before any work.

    Both a :class:`mpitrain.errors.UsageError` (the command line's ``--param``)
    and a ``ValueError``/``TypeError``, as scikit-learn's own parameter
    error is.
    """


# -- pure and local helpers ------------------------------------------------------


def tracker_host(nodes: int) -> str:
    """The address rank 0's tracker listens on, reachable by every rank. Local.

    ``MPITRAIN_TRACKER_HOST`` if set; loopback when every rank runs on one
    node; otherwise an address of rank 0's host name that is not loopback
    (a host name that resolves only to loopback, as some ``/etc/hosts``
    files make it, cannot serve other nodes: that is an error naming the
    variable to set).

    Parameters
    ----------
    nodes : int
        The number of nodes the ranks run on (:func:`mpitrain.comm.node_layout`).
    """
    given = os.environ.get(TRACKER_HOST_VARIABLE, "").strip()
    if given:
        return given
    if nodes <= 1:
        return "127.0.0.1"
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(
            f"the ranks span {nodes} nodes, and rank 0's host name {name!r} does not "
            f"resolve ({exc}): set {TRACKER_HOST_VARIABLE} to an address of rank 0's node"
        ) from None
    addresses = [info[4][0] for info in infos if not info[4][0].startswith("127.")]
    if not addresses:
        raise OSError(
            f"the ranks span {nodes} nodes, but rank 0's host name {name!r} resolves to "
            f"loopback only: set {TRACKER_HOST_VARIABLE} to an address of rank 0's node "
            "that the other nodes reach"
        )
    return addresses[0]


def booster_bytes(booster: Any) -> np.ndarray:
    """A booster as its raw UBJSON bytes in a ``uint8`` array (for a checkpoint). Local."""
    return np.frombuffer(
        bytes(booster.save_raw(raw_format="ubj")), dtype=np.uint8
    ).copy()


def booster_from_bytes(raw: np.ndarray) -> Any:
    """The booster saved by :func:`booster_bytes`. Local."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(np.asarray(raw, dtype=np.uint8).tobytes()))
    return booster


def _threads_in_force(local_size: int) -> int:
    """XGBoost threads per rank: the rank's share of the node's cores, or a thread limit if lower. Local.

    XGBoost takes its threads from ``nthread``, not from the BLAS/OpenMP
    limits that mpitrain's workflow sets from ``--threads-per-rank``, so
    they are read here (:mod:`mpitrain.utils.threads`).
    """
    return max(1, min(default_threads(local_size), threads_in_force()))


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is XGBoost's error for a peer that left the collective. Pure."""
    if type(exc).__name__ != "XGBoostError":
        return False
    text = str(exc).lower()
    return any(word in text for word in _PEER_LOST)


def _short_xgboost_message(exc: BaseException) -> str:
    """XGBoost's message without its stack trace and source positions. Pure."""
    lines = []
    for line in str(exc).splitlines():
        if line.strip().startswith(("Stack trace", "[bt]")):
            break
        # "[12:00:00] /workspace/src/x.cc:27: text" and "- [x.cc:1|12:00:00]: text".
        pattern = r"^-?\s*\[[^\]]*\]:?\s*(\S+\.(cc|h):\d+:\s*)?"
        line, stripped = line.strip(), None
        while stripped != line:
            stripped, line = line, re.sub(pattern, "", line)
        if line:
            lines.append(line)
    return " ".join(lines) or type(exc).__name__


# -- the collective training ------------------------------------------------------


def _select_rows(
    X: np.ndarray, y: np.ndarray, w: np.ndarray | None, keep: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """This rank's rows that ``keep`` selects (all with ``None``, as views), as XGBoost takes them. Local."""
    if keep is None:
        return X, y, w
    return X[keep], y[keep], None if w is None else w[keep]


def _block_iter(
    reader: RowReader,
    keep: np.ndarray | None,
    stats: dict,
) -> Any:
    """An ``xgboost.DataIter`` over this rank's rows, block by block. Local.

    XGBoost reads the iterator more than once (the sketch, then the
    quantised rows); every pass opens a new streamed read of the same rows
    (``RowReader.from_row``), so only the reader's ring of blocks is ever
    in memory.  ``keep`` selects rows by their position on this rank
    (training or validation rows); ``stats`` counts the passes.
    """
    import xgboost

    class BlockIter(xgboost.DataIter):
        def __init__(self) -> None:
            super().__init__(release_data=True)
            self._blocks: Iterator | None = None
            self._reader: RowReader | None = None
            self._given = 0  # batches given in this pass

        def _open(self) -> None:
            self._close()
            self._reader = reader.from_row(reader.start)
            self._blocks = self._reader.stream()
            self._given = 0
            stats["passes"] = stats.get("passes", 0) + 1

        def _close(self) -> None:
            if self._reader is not None:
                self._reader.close()
            self._reader, self._blocks = None, None

        def reset(self) -> None:
            self._close()

        def next(self, input_data: Callable) -> bool:
            if self._blocks is None:
                self._open()
            for block in self._blocks:
                rows: Any = slice(None)
                if keep is not None:
                    rows = keep[block.offset : block.offset + block.n_rows]
                    if not rows.any():
                        continue
                w = block.sample_weight
                input_data(
                    data=np.ascontiguousarray(block.X[rows]),
                    label=np.asarray(block.y[rows], dtype=np.float64),
                    weight=None if w is None else np.ascontiguousarray(w[rows]),
                )
                self._given += 1
                return True
            if self._given == 0:
                # A rank without rows (or none selected) still takes part: one empty batch.
                self._given = 1
                input_data(
                    data=np.zeros((0, reader.n_features), dtype=reader.x_dtype),
                    label=np.zeros(0),
                )
                return True
            self._close()
            return False

    return BlockIter()


class _Rounds:
    """Boosting rounds as a checkpoint loop, with early stopping that resumes. Local.

    Built from XGBoost's own ``EarlyStopping`` callback, whose public
    record (``stopping_history``, ``best_scores``, ``current_rounds``,
    ``maximize``) is saved with the booster, so a resumed fit stops where
    the uninterrupted one stops.
    """

    def __init__(self, loop: Any, early_stopping_rounds: int | None) -> None:
        import xgboost

        self.loop = loop
        self.history: dict = {}
        self.early = (
            xgboost.callback.EarlyStopping(rounds=int(early_stopping_rounds))
            if early_stopping_rounds
            else None
        )
        self.booster = None
        if loop is not None and loop.state is not None:
            state = loop.state
            self.booster = booster_from_bytes(state["booster"])
            self.history = json.loads(state["history"])
            if self.early is not None and state.get("early_stopping"):
                for name, value in json.loads(state["early_stopping"]).items():
                    setattr(self.early, name, value)

    @property
    def done(self) -> int:
        """Rounds already in the booster resumed from (0 when starting)."""
        return 0 if self.booster is None else self.booster.num_boosted_rounds()

    def state(self, model: Any, history: dict) -> dict:
        """What a checkpoint saves: booster bytes and plain-value records. Local."""
        merged = _merge_history(self.history, history)
        early = None
        if self.early is not None:
            early = json.dumps(
                {
                    "stopping_history": self.early.stopping_history,
                    "best_scores": self.early.best_scores,
                    "current_rounds": self.early.current_rounds,
                    "maximize": self.early.maximize,
                }
            )
        return {
            "booster": booster_bytes(model),
            "history": json.dumps(merged),
            "early_stopping": early,
        }

    def callbacks(self) -> list:
        """XGBoost callbacks: early stopping, then the checkpoint step. Local."""
        import xgboost

        rounds = self
        out = [] if self.early is None else [self.early]
        if self.loop is not None:

            class CheckpointStep(xgboost.callback.TrainingCallback):
                # Every rank reaches the same round boundaries (XGBoost's
                # collective keeps them in step), so the loop's collective
                # step is called in the same order everywhere.
                def after_iteration(self, model, epoch, evals_log) -> bool:
                    rounds.loop.step(
                        lambda: rounds.state(model, evals_log),
                        iteration=model.num_boosted_rounds(),
                    )
                    return False

            out.append(CheckpointStep())
        return out


def _merge_history(saved: dict, new: dict) -> dict:
    """The evaluation history before a resume followed by the one after it. Pure."""
    merged = {d: {m: list(v) for m, v in ms.items()} for d, ms in saved.items()}
    for data, metrics in new.items():
        for metric, values in metrics.items():
            merged.setdefault(data, {}).setdefault(metric, [])
            merged[data][metric] = merged[data][metric] + [float(v) for v in values]
    return merged


def _start_tracker(
    comm: Intracomm, n_workers: int, host: str, timeout: int
) -> tuple[Any, dict]:
    """Start the tracker on rank 0; every rank gets its worker arguments. Collective over ``comm``.

    Returns ``(tracker or None, worker_args)``: the tracker on rank 0 only.
    A failure to start it (no such address, no port) is raised on every rank.
    """
    tracker, args = None, None
    with collective_check(comm, "starting XGBoost's tracker on rank 0"):
        if comm.Get_rank() == 0:
            from xgboost.tracker import RabitTracker

            tracker = RabitTracker(
                n_workers=n_workers,
                host_ip=host,
                port=0,
                sortby="task",
                timeout=timeout,
            )
            tracker.start()
            args = tracker.worker_args()
    return tracker, bcast_object(args, comm)


class _Discard:
    """A text stream that drops what is written to it. Local."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _stop_tracker(tracker: Any, timeout: int, *, wait: bool) -> None:
    """Rank 0: wait for the tracker to see every worker leave (``wait``), then free it. Local.

    After a failure the workers may not all have said goodbye: the tracker
    is freed at once (freeing stops it), and its own complaint about that
    is not the error to report.
    """
    if tracker is None:
        return
    if not wait:
        try:
            tracker.free()
        except Exception:
            pass
        return
    try:
        tracker.wait_for(timeout)
    finally:
        tracker.free()


def train_across_ranks(
    params: dict,
    prepare: Callable[[], Any],
    make_matrices: Callable[[Any], tuple[Any, Any]],
    num_boost_round: int,
    comm: Intracomm,
    *,
    rounds: _Rounds,
    callbacks: list,
    host: str,
    timeout: int,
    verbosity: int = 0,
) -> tuple[Any, dict]:
    """Train one booster on all ranks' rows with XGBoost's collective. Collective over ``comm``.

    ``prepare()`` makes what this rank hands to XGBoost (its rows, their
    copies for training and validation) before XGBoost's collective starts,
    and its failure on any rank is agreed over MPI there;
    ``make_matrices(prepared)`` then builds this rank's training matrix and
    its validation matrix (or ``None``) inside the collective (their
    quantile sketch is merged across ranks).  Returns the booster
    (identical on every rank) and the evaluation history.  A failure on
    any rank is raised on every rank as one
    :class:`mpitrain.errors.DistributedError` naming the ranks where it
    began; a checkpoint after a signal raises
    :class:`mpitrain.checkpoint.CheckpointInterrupted` on every rank.
    Nothing that can fail runs between starting the tracker and joining
    it: a rank that never joined would keep the others waiting in
    XGBoost's start-up until ``timeout``.

    Failures are kept out of XGBoost's collective where mpitrain can: a
    rank that leaves it while a peer waits inside one of its operations
    usually ends that wait with an error, but not always (XGBoost 3.2 left
    the peer waiting, for a thread that had already stopped, twice in
    430-830 fits that failed on one rank while building its matrix).  So
    the preparation is agreed before the collective, and the
    ``callbacks`` run inside one callback that agrees their failures over
    MPI each round: every rank then stops training at the same round and
    leaves XGBoost together.  What fails inside XGBoost's own code (no
    memory for its sketch) still leaves one rank first; if the others then
    stay inside XGBoost past ``timeout`` and as long again, the job is
    aborted with the failing rank's message (:func:`_leave_together`).
    """
    import xgboost
    from xgboost.collective import CommunicatorContext

    rank = comm.Get_rank()
    booster, history, failure = None, {}, None
    # XGBoost's own log lines (a rank without rows, ...) only at the
    # verbosity asked for; quiet by default.  The tracker's thread ignores
    # that setting and logs each worker's arrival through Python's print:
    # standard output is data (``mpitrain predict``), so its lines go to
    # standard error, or nowhere when quiet, while the collective runs.
    log = sys.stderr if verbosity else _Discard()
    agreed, outcome = _agreed_callbacks(list(callbacks), comm)
    with collective_check(comm, "preparing the rows for XGBoost"):
        prepared = prepare()
    with xgboost.config_context(verbosity=verbosity), redirect_stdout(log):
        tracker, args = _start_tracker(comm, comm.Get_size(), host, timeout)
        try:
            with CommunicatorContext(
                **args, dmlc_task_id=str(rank), dmlc_timeout=timeout
            ):
                dtrain, dvalid = make_matrices(prepared)
                del prepared  # XGBoost holds the quantised rows now
                evals = [] if dvalid is None else [(dvalid, "validation")]
                booster = xgboost.train(
                    params,
                    dtrain,
                    num_boost_round=num_boost_round - rounds.done,
                    evals=evals,
                    evals_result=history,
                    verbose_eval=False,
                    xgb_model=rounds.booster,
                    callbacks=([agreed] if callbacks else []) + rounds.callbacks(),
                )
                # Raised here, on every rank alike, once no rank is inside
                # one of XGBoost's operations.
                outcome.raise_if_failed()
        except Exception as exc:
            failure = exc
        _leave_together(failure, comm, timeout)
        kinds = allgather_object(_failure_kind(failure), comm)
        with collective_check(comm, "stopping XGBoost's tracker on rank 0"):
            if rank == 0:
                _stop_tracker(tracker, timeout, wait=not any(kinds))
    _agree_training(failure, kinds, comm)
    return booster, _merge_history(rounds.history, history)


class _PeerCallbackFailed(Exception):
    """A callback failed on another rank, and training stopped here too. Local."""


class _CallbackOutcome:
    """What the agreed callbacks saw: this rank's own failure, or a peer's. Local."""

    def __init__(self) -> None:
        self.own: BaseException | None = None
        self.peer = False

    @property
    def failed(self) -> bool:
        return self.own is not None or self.peer

    def raise_if_failed(self) -> None:
        if self.own is not None:
            raise self.own
        if self.peer:
            raise _PeerCallbackFailed("a callback failed on another rank")


def _agreed_callbacks(callbacks: list, comm: Intracomm) -> tuple[Any, _CallbackOutcome]:
    """One XGBoost callback that runs ``callbacks`` and agrees their failures over MPI. Local to make.

    Each of its hooks is collective over ``comm`` (every rank reaches the
    same hooks: XGBoost keeps the rounds in step): it runs the hook of
    every callback, catching a failure, then one reduction says whether
    any rank failed or asked to stop.  After a failure anywhere, training
    stops on every rank at that round and no callback runs again; the
    caller raises :meth:`_CallbackOutcome.raise_if_failed` after
    ``xgboost.train`` returns.
    """
    import xgboost

    for callback in callbacks:
        if not isinstance(callback, xgboost.callback.TrainingCallback):
            raise TypeError(
                f"callbacks must be xgboost.callback.TrainingCallback objects, got {callback!r}"
            )
    outcome = _CallbackOutcome()

    def agree_on(stop: bool) -> bool:
        failed_here = outcome.own is not None
        flags = allreduce_minmax(np.array([float(failed_here), float(stop)]), comm)[1]
        if flags[0] and not failed_here:
            outcome.peer = True
        return bool(flags[0] or flags[1])

    def each(call: Callable[[Any], Any]) -> list:
        """``call`` on every callback until one fails; nothing once any rank failed."""
        results = []
        if not outcome.failed:
            try:
                for callback in callbacks:
                    results.append(call(callback))
            except Exception as exc:
                outcome.own = exc
        return results

    def chain(model: Any, hook: str) -> Any:
        """The model through every callback's ``hook`` in turn (before or after training)."""
        if not outcome.failed:
            try:
                for callback in callbacks:
                    model = getattr(callback, hook)(model)
            except Exception as exc:
                outcome.own = exc
        return model

    class Agreed(xgboost.callback.TrainingCallback):
        def before_training(self, model):
            model = chain(model, "before_training")
            agree_on(False)
            return model

        def after_training(self, model):
            model = chain(model, "after_training")
            agree_on(False)
            return model

        def before_iteration(self, model, epoch, evals_log) -> bool:
            stops = each(lambda c: c.before_iteration(model, epoch, evals_log))
            return agree_on(any(stops))

        def after_iteration(self, model, epoch, evals_log) -> bool:
            stops = each(lambda c: c.after_iteration(model, epoch, evals_log))
            return agree_on(any(stops))

    return Agreed(), outcome


def _leave_together(
    failure: BaseException | None, comm: Intracomm, timeout: int
) -> None:
    """Every rank out of XGBoost's collective, or the job aborted. Collective over ``comm``.

    A rank that failed inside the collective waits for the others at most
    ``timeout`` seconds (``collective_timeout``, after which XGBoost's own
    waits are meant to give up) and as long again, at most a minute more.
    Ranks still missing then are taken as stuck inside one of XGBoost's
    operations (see
    :func:`train_across_ranks`), and only ending the job frees them: this
    rank says why on standard error and aborts the job, instead of a hang.
    """
    if failure is None:
        quiet_barrier(comm)
        return
    grace = timeout + min(timeout, 60)
    if not quiet_barrier(comm, timeout=grace):
        shown = failure
        if type(failure).__name__ == "XGBoostError":
            shown = RuntimeError(_short_xgboost_message(failure))
        abort_job(
            f"mpitrain: training gradient-boosted trees failed on rank {comm.Get_rank()} "
            f"(of {comm.Get_size()}): {str(shown).strip() or type(shown).__name__}\n"
            f"mpitrain: other ranks stayed inside XGBoost's collective for {grace} s after it "
            "(collective_timeout and as long again); aborting the whole job\n"
        )


def _failure_kind(failure: BaseException | None) -> str | None:
    """``None``, "interrupted" (a checkpoint after a signal), "peer" (a peer left) or "own". Pure."""
    if failure is None:
        return None
    if isinstance(failure, CheckpointInterrupted):
        return "interrupted"
    if isinstance(failure, _PeerCallbackFailed):
        return "peer"
    return "peer" if _lost_peer(failure) else "own"


def _agree_training(
    failure: BaseException | None, kinds: list[str | None], comm: Intracomm
) -> None:
    """Raise one outcome of training on every rank. Collective over ``comm``.

    ``kinds`` are every rank's :func:`_failure_kind`, gathered.  A rank
    whose XGBoost error only says that a peer left failed because of
    another rank: when some rank failed by itself, only those ranks'
    errors are reported.  A checkpoint interruption on every rank is raised
    as it is (its exit status tells the scheduler to requeue).
    """
    if not any(kinds):
        return
    if kinds.count("interrupted") == len(kinds):
        raise failure
    primary = "own" in kinds or "interrupted" in kinds
    shown: BaseException | None = None
    if failure is not None and (kinds[comm.Get_rank()] != "peer" or not primary):
        shown = failure
        if type(failure).__name__ == "XGBoostError":
            shown = RuntimeError(_short_xgboost_message(failure))
    agree(shown, comm, "training gradient-boosted trees", quiet=False)


# -- the estimators -------------------------------------------------------------------

_OPTIONAL_INT = [Interval(Integral, 0, None, closed="left"), None]
_OPTIONAL_POSITIVE_INT = [Interval(Integral, 1, None, closed="left"), None]
_OPTIONAL_NONNEG = [Interval(Real, 0, None, closed="left"), None]
_OPTIONAL_FRACTION = [Interval(Real, 0, 1, closed="right"), None]

_CONSTRAINTS = {
    "max_depth": _OPTIONAL_INT,
    "max_leaves": _OPTIONAL_INT,
    "max_bin": [Interval(Integral, 2, None, closed="left"), None],
    "grow_policy": [StrOptions({"depthwise", "lossguide"}), None],
    "learning_rate": _OPTIONAL_NONNEG,
    "n_estimators": _OPTIONAL_POSITIVE_INT,
    "verbosity": [Interval(Integral, 0, 3, closed="both"), None],
    "objective": [str, callable, None],
    "booster": [StrOptions({"gbtree", "dart", "gblinear"}), None],
    "tree_method": [StrOptions({"hist", "approx", "auto"}), None],
    "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
    "gamma": _OPTIONAL_NONNEG,
    "min_child_weight": _OPTIONAL_NONNEG,
    "max_delta_step": _OPTIONAL_NONNEG,
    "subsample": _OPTIONAL_FRACTION,
    "sampling_method": [StrOptions({"uniform"}), None],
    "colsample_bytree": _OPTIONAL_FRACTION,
    "colsample_bylevel": _OPTIONAL_FRACTION,
    "colsample_bynode": _OPTIONAL_FRACTION,
    "reg_alpha": _OPTIONAL_NONNEG,
    "reg_lambda": _OPTIONAL_NONNEG,
    "scale_pos_weight": _OPTIONAL_NONNEG,
    "base_score": [Real, list, None],
    "random_state": ["random_state"],
    "missing": [Real],
    "num_parallel_tree": _OPTIONAL_POSITIVE_INT,
    "monotone_constraints": [dict, str, None],
    "interaction_constraints": [str, list, None],
    "importance_type": [
        StrOptions({"gain", "weight", "cover", "total_gain", "total_cover"}),
        None,
    ],
    "device": [StrOptions({"cpu"}), None],
    "validate_parameters": ["boolean", None],
    "max_cat_to_onehot": _OPTIONAL_POSITIVE_INT,
    "max_cat_threshold": _OPTIONAL_POSITIVE_INT,
    "multi_strategy": [StrOptions({"one_output_per_tree", "multi_output_tree"}), None],
    "eval_metric": [str, list, callable, None],
    "early_stopping_rounds": _OPTIONAL_POSITIVE_INT,
    "callbacks": [list, None],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "collective_timeout": [Interval(Integral, 1, None, closed="left")],
    "comm": "no_validation",
}


class _BoostedAcrossRanks(DistributedEstimator):
    """Shared fit of :class:`XGBClassifier` and :class:`XGBRegressor` (prediction: the base's)."""

    _own_params = ("comm", "validation_fraction", "collective_timeout")
    _parameter_constraints = _CONSTRAINTS
    # XGBoost takes NaN as a missing value; infinities are refused up front.
    _x_checks = {"dtype": FLOAT_DTYPES, "ensure_all_finite": "allow-nan"}
    _classifier = False
    _combination = "collective"

    @property
    def _sklearn_class(self) -> type:
        import xgboost

        return xgboost.XGBClassifier if self._classifier else xgboost.XGBRegressor

    def _unfitted_estimator(self) -> Any:
        """The unfitted XGBoost scikit-learn estimator with the user's parameters. Local.

        Parameters left at ``None`` are not passed, so XGBoost's own
        defaults apply (``XGBClassifier``'s objective is "binary:logistic",
        not the native default "reg:squarederror").
        """
        params = self.get_params(deep=False)
        for name in self._own_params:
            params.pop(name, None)
        return self._sklearn_class(**{k: v for k, v in params.items() if v is not None})

    # -- parameters -------------------------------------------------------------------

    def _validate_params(self) -> None:
        """scikit-learn's constraints, then XGBoost's own check of the values. Local.

        Raises :class:`BoostingParameterError` (a ``UsageError`` and a
        ``ValueError``); :func:`~mpitrain.utils.validation.agree_parameters`
        runs it on every rank before the fit's work and agrees the verdict.
        """
        try:
            super()._validate_params()
        except (ValueError, TypeError) as exc:
            raise BoostingParameterError(str(exc)) from None
        if self.tree_method not in _DISTRIBUTED_TREE_METHODS:
            raise BoostingParameterError(
                f"tree_method={self.tree_method!r} does not run across ranks; use 'hist' or 'approx'"
            )
        self._probe_xgboost_params()

    def _probe_xgboost_params(self) -> None:
        """Let XGBoost configure a booster with these parameters on three rows. Local.

        XGBoost checks its parameters' values (ranges, names of objectives
        and metrics) when a booster is configured; doing it here on a
        throwaway booster refuses a bad value before any row is read.
        Constraints that name columns are left to the fit, which has them.
        """
        import xgboost

        params = self._booster_params(n_classes=3 if self._classifier else 0, threads=1)
        for name in ("monotone_constraints", "interaction_constraints"):
            params.pop(name, None)
        params["validate_parameters"] = True
        probe = xgboost.DMatrix(np.zeros((3, 1)), label=np.arange(3.0) % 2)
        try:
            xgboost.Booster(params, [probe]).save_config()
        except xgboost.core.XGBoostError as exc:
            raise BoostingParameterError(
                f"XGBoost refuses the parameters: {_short_xgboost_message(exc)}"
            ) from None

    def _booster_params(self, *, n_classes: int, threads: int) -> dict:
        """The native XGBoost parameters of this fit. Local.

        As XGBoost's scikit-learn API sets them: its ``get_xgb_params()``,
        a multi-class objective and ``num_class`` for more than 2 classes,
        ``nthread`` from the threads per rank.
        """
        unfitted = self._unfitted_estimator()
        params = unfitted.get_xgb_params()
        for name in ("n_estimators", "early_stopping_rounds", "callbacks", "n_jobs"):
            params.pop(name, None)
        params = {k: v for k, v in params.items() if v is not None}
        metrics = (
            self.eval_metric
            if isinstance(self.eval_metric, list)
            else [self.eval_metric]
        )
        if callable(self.objective) or any(callable(m) for m in metrics):
            raise BoostingParameterError(
                "a callable objective or eval_metric is not supported across ranks: "
                "name one of XGBoost's"
            )
        if self._classifier and n_classes > 2:
            if params.get("objective") != "multi:softmax":
                params["objective"] = "multi:softprob"
            params["num_class"] = n_classes
        params["nthread"] = int(self.n_jobs) if self.n_jobs else threads
        params.setdefault("tree_method", "hist")
        return params

    # -- fit ------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows, every tree from histograms of all ranks' rows.

        Collective over ``comm``: every rank calls it with its own rows
        (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
            NaN is a missing value (XGBoost's ``missing``).
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        import xgboost

        with self._fitting(X, y, sample_weight) as fit:
            comm = fit.comm
            self._agree_classes(fit.y, fit.sample_weight, comm)
            n_local = fit.X.shape[0]
            valid = self._validation_mask(n_local, None, comm)
            y_code = np.asarray(fit.y, dtype=np.float64)
            threads, host = self._placement(comm)

            def select(keep: np.ndarray | None) -> tuple:
                # Copies of the selected rows (training or validation), made
                # before XGBoost's collective: a failure here is agreed by MPI.
                return _select_rows(fit.X, y_code, fit.sample_weight, keep)

            def matrix(rows: tuple, ref: Any = None) -> Any:
                X_rows, y_rows, w_rows = rows
                return xgboost.QuantileDMatrix(
                    X_rows,
                    label=y_rows,
                    weight=w_rows,
                    missing=self.missing,
                    max_bin=self.max_bin,
                    nthread=threads,
                    ref=ref,
                )

            self._train(select, matrix, valid, comm, threads, host)
            self.n_rows_ = fit.rows.n_rows
        return self

    def fit_reader(self, reader: RowReader, *, comm: Intracomm | None = None):
        """Fit on the rows a :class:`mpitrain.data.RowReader` streams, block by block.

        Collective over ``comm`` (``None``: the estimator's ``comm``).  Each
        rank's rows go from the reader's ring of blocks through
        ``xgboost.DataIter`` into a ``QuantileDMatrix``: the float rows are
        never held whole.  The reader is read several times (the classes of
        a classifier, XGBoost's sketch, its quantisation); it must be
        streamed (not begun).  Rows are checked block by block (finite or
        NaN features, labels, weights); the first error on any rank stops
        the fit on every rank.

        Parameters
        ----------
        reader : mpitrain.data.RowReader
            This rank's rows (with a target).
        comm : mpi4py.MPI.Intracomm, default=None

        Returns
        -------
        self : object
        """
        import xgboost

        if comm is not None:
            self.set_params(comm=comm)
        with self._fit_comm() as lib:
            y_parts, w_total = [], 0.0
            with collective_check(lib, f"checking the rows of {reader.path}"):
                if reader.names["y"] is None:
                    raise ValueError(f"{reader.path}: a target (y) is needed to fit")
                # One pass for the checks and the labels: every block is
                # checked as fit checks rows in memory, the labels kept small.
                probe = reader.from_row(reader.start)
                first = True
                try:
                    for block in probe.stream():
                        _, yb, wb = self._check_local_rows(
                            block.X, block.y, block.sample_weight
                        )
                        first = False
                        if self._classifier:
                            y_parts.append(np.unique(yb))
                        if wb is not None:
                            w_total += float(np.sum(wb))
                finally:
                    # A bad block ends the pass early: stop the reading thread.
                    probe.close()
                if first:  # no block on this rank: set the columns from an empty slice
                    self._check_local_rows(
                        np.zeros((0, reader.n_features)), np.zeros(0), None
                    )
            n_local = reader.stop - reader.start
            # The weight total stands for the weights: agree_rows sums what it is given.
            weights = (
                None if reader.names["sample_weight"] is None else np.array([w_total])
            )
            rows = agree_rows(
                lib,
                _ShapeOnly(n_local, reader.n_features, reader.x_dtype),
                weights,
                estimator=self,
            )
            labels = np.unique(np.concatenate(y_parts)) if y_parts else np.zeros(0)
            self._agree_classes(labels, None, lib, warn=False)
            valid = self._validation_mask(n_local, reader.start, lib)
            threads, host = self._placement(lib)
            self.stream_stats_ = {}
            passes: list = []

            def matrix(keep: np.ndarray | None, ref: Any = None) -> Any:
                passes.append(_block_iter(reader, keep, self.stream_stats_))
                return xgboost.QuantileDMatrix(
                    passes[-1],
                    missing=self.missing,
                    max_bin=self.max_bin,
                    nthread=threads,
                    ref=ref,
                )

            try:
                # The rows stay in the file until XGBoost's passes read them.
                self._train(lambda keep: keep, matrix, valid, lib, threads, host)
            finally:
                # A failure inside XGBoost can end a pass early: stop its reading thread.
                for unfinished in passes:
                    unfinished.reset()
            self.n_rows_ = rows.n_rows
        return self

    def _agree_classes(
        self,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        comm: Intracomm,
        *,
        warn: bool = True,
    ) -> None:
        """Agree on the classes and check they are ``0 .. n_classes - 1`` (classifier only). Collective over ``comm``.

        The labels then go to XGBoost as they are (as float64).
        """
        if not self._classifier:
            return
        agreed = agree_classes(y, sample_weight, comm, warn=warn)
        classes = agreed.classes
        # The same classes on every rank, so every rank raises this alike.
        if classes.dtype.kind not in "iub" or not np.array_equal(
            classes, np.arange(len(classes))
        ):
            shown = ", ".join(map(repr, classes[:6].tolist()))
            more = ", ..." if len(classes) > 6 else ""
            raise ValueError(
                f"XGBClassifier needs the class labels 0, 1, ..., n_classes - 1 over all "
                f"ranks, as xgboost.XGBClassifier does (its fitted model predicts them); "
                f"got [{shown}{more}]: encode the labels first "
                "(sklearn.preprocessing.LabelEncoder)"
            )
        self.classes_ = classes
        self.n_classes_ = len(classes)

    def _validation_mask(
        self, n_local: int, row_offset: int | None, comm: Intracomm
    ) -> np.ndarray | None:
        """Validation rows of this rank (early stopping), by global row id. Collective over ``comm``.

        ``None`` without ``early_stopping_rounds``.  The same rows at every
        rank count: ``validation_fraction`` of all rows, chosen from the
        seed ``random_state`` (0 when ``None``).
        """
        if not self.early_stopping_rounds:
            return None
        seed = self.random_state if isinstance(self.random_state, Integral) else 0
        return train_test_split_mask(
            n_local,
            row_offset,
            test_size=self.validation_fraction,
            seed=int(seed),
            comm=comm,
        )

    def _placement(self, comm: Intracomm) -> tuple[int, str]:
        """Threads per rank and the tracker's address. Collective over ``comm``."""
        layout = node_layout(comm)
        threads = _threads_in_force(layout["cpu_sharers"])
        host = None
        with collective_check(comm, "choosing the tracker's address"):
            if comm.Get_rank() == 0:
                host = tracker_host(layout["nodes"])
        return threads, bcast_object(host, comm)

    def _train(
        self,
        select: Callable[[np.ndarray | None], Any],
        matrix: Callable[..., Any],
        valid: np.ndarray | None,
        comm: Intracomm,
        threads: int,
        host: str,
    ) -> None:
        """Train (resuming from a checkpoint if one is active), set the fitted attributes. Collective over ``comm``.

        ``select(keep)`` makes what builds the rows ``keep`` selects
        (``None``: all), before XGBoost's collective; ``matrix(selected,
        ref=None)`` builds this rank's ``QuantileDMatrix`` from it, inside
        the collective.  ``valid`` marks the validation rows (early
        stopping) or is ``None``.
        """

        def prepare() -> list:
            if valid is None:
                return [select(None)]
            return [select(~valid), select(valid)]

        def make_matrices(parts: list) -> tuple[Any, Any]:
            # Each part is let go once XGBoost has quantised it.
            dtrain = matrix(parts.pop(0))
            if not parts:
                return dtrain, None
            return dtrain, matrix(parts.pop(0), ref=dtrain)

        n_classes = getattr(self, "n_classes_", 0)
        params = self._booster_params(n_classes=n_classes, threads=threads)
        unfitted = self._unfitted_estimator()
        total = unfitted.get_num_boosting_rounds()
        key = {
            "estimator": type(self).__name__,
            "params": {k: v for k, v in sorted(params.items()) if k != "nthread"},
            "n_estimators": total,
            "early_stopping_rounds": self.early_stopping_rounds,
            "validation_fraction": self.validation_fraction,
            "classes": [str(c) for c in getattr(self, "classes_", [])],
            "n_features": self.n_features_in_,
        }
        loop = checkpoint_loop(
            "boosting", key=key, comm=comm, mode="all", what="boosting", unit="round"
        )
        rounds = _Rounds(loop, self.early_stopping_rounds)
        tic = time.perf_counter()
        booster, history = train_across_ranks(
            params,
            prepare,
            make_matrices,
            total,
            comm,
            rounds=rounds,
            callbacks=list(self.callbacks or []),
            host=host,
            timeout=int(self.collective_timeout),
            verbosity=0 if self.verbosity is None else int(self.verbosity),
        )
        self.timings_ = {"boosting": time.perf_counter() - tic}
        self.threads_per_rank_ = threads
        self.estimator_ = self._plain_estimator(booster, history)

    def _plain_estimator(self, booster: Any, history: dict) -> Any:
        """XGBoost's scikit-learn estimator holding ``booster``, loaded as XGBoost loads a saved one. Local."""
        plain = self._unfitted_estimator()
        plain.set_params(callbacks=None)
        raw = booster.save_raw(raw_format="ubj")
        plain.load_model(bytearray(raw))
        if self._classifier:
            # XGBoost reads it from the model only from 3.0 on; 2.1 needs it set.
            plain.n_classes_ = self.n_classes_
        if history:
            plain.evals_result_ = history
        return plain

    # -- after fit ------------------------------------------------------------------------

    @property
    def feature_importances_(self) -> np.ndarray:
        """XGBoost's feature importances (``importance_type``) of the fitted model. Local."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.feature_importances_

    @property
    def best_iteration(self) -> int:
        """The best round found by early stopping (0-based); XGBoost's attribute. Local."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.best_iteration

    def evals_result(self) -> dict:
        """The validation metrics of every round (with ``early_stopping_rounds``). Local."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.evals_result()


class _ShapeOnly:
    """The shape and dtype of a rank's rows without the rows: for :func:`agree_rows`. Pure."""

    def __init__(self, n_rows: int, n_features: int, dtype: Any) -> None:
        self.shape = (n_rows, n_features)
        self.dtype = np.dtype(dtype)


class XGBRegressor(RegressorMixin, _BoostedAcrossRanks):
    """Gradient-boosted regression trees across ranks, on XGBoost's collective.

    Takes the parameters of ``xgboost.XGBRegressor`` (same names, same
    defaults: ``None`` lets XGBoost choose), plus:

    validation_fraction : float, default=0.1
        Share of all rows held out (by global row id) for early stopping,
        used only with ``early_stopping_rounds``.
    collective_timeout : int, default=1800
        Seconds any rank waits in one of XGBoost's collective operations
        (and the tracker for its workers) before giving up: a bound for a
        rank that hangs.  A rank that fails or dies ends the others' waits at
        once, whatever this is.
    comm : mpi4py.MPI.Intracomm, default=None

    ``estimator_`` is a plain fitted ``xgboost.XGBRegressor``.
    """

    def __init__(
        self,
        *,
        max_depth=None,
        max_leaves=None,
        max_bin=None,
        grow_policy=None,
        learning_rate=None,
        n_estimators=None,
        verbosity=None,
        objective=None,
        booster=None,
        tree_method=None,
        n_jobs=None,
        gamma=None,
        min_child_weight=None,
        max_delta_step=None,
        subsample=None,
        sampling_method=None,
        colsample_bytree=None,
        colsample_bylevel=None,
        colsample_bynode=None,
        reg_alpha=None,
        reg_lambda=None,
        scale_pos_weight=None,
        base_score=None,
        random_state=None,
        missing=np.nan,
        num_parallel_tree=None,
        monotone_constraints=None,
        interaction_constraints=None,
        importance_type=None,
        device=None,
        validate_parameters=None,
        max_cat_to_onehot=None,
        max_cat_threshold=None,
        multi_strategy=None,
        eval_metric=None,
        early_stopping_rounds=None,
        callbacks=None,
        validation_fraction=0.1,
        collective_timeout=1800,
        comm=None,
    ):
        self.max_depth = max_depth
        self.max_leaves = max_leaves
        self.max_bin = max_bin
        self.grow_policy = grow_policy
        self.learning_rate = learning_rate
        self.n_estimators = n_estimators
        self.verbosity = verbosity
        self.objective = objective
        self.booster = booster
        self.tree_method = tree_method
        self.n_jobs = n_jobs
        self.gamma = gamma
        self.min_child_weight = min_child_weight
        self.max_delta_step = max_delta_step
        self.subsample = subsample
        self.sampling_method = sampling_method
        self.colsample_bytree = colsample_bytree
        self.colsample_bylevel = colsample_bylevel
        self.colsample_bynode = colsample_bynode
        self.reg_alpha = reg_alpha
        self.reg_lambda = reg_lambda
        self.scale_pos_weight = scale_pos_weight
        self.base_score = base_score
        self.random_state = random_state
        self.missing = missing
        self.num_parallel_tree = num_parallel_tree
        self.monotone_constraints = monotone_constraints
        self.interaction_constraints = interaction_constraints
        self.importance_type = importance_type
        self.device = device
        self.validate_parameters = validate_parameters
        self.max_cat_to_onehot = max_cat_to_onehot
        self.max_cat_threshold = max_cat_threshold
        self.multi_strategy = multi_strategy
        self.eval_metric = eval_metric
        self.early_stopping_rounds = early_stopping_rounds
        self.callbacks = callbacks
        self.validation_fraction = validation_fraction
        self.collective_timeout = collective_timeout
        self.comm = comm


class XGBClassifier(ClassifierMixin, _BoostedAcrossRanks):
    """Gradient-boosted classification trees across ranks, on XGBoost's collective.

    Parameters as for :class:`XGBRegressor` (those of
    ``xgboost.XGBClassifier``, plus ``validation_fraction``,
    ``collective_timeout`` and ``comm``).  Classes are agreed over all ranks
    first, so a rank may hold only some of them (or no rows).

    The labels must be ``0, 1, ..., n_classes - 1`` over all ranks (a rank
    may lack some), as ``xgboost.XGBClassifier`` requires: ``estimator_``,
    a plain fitted ``xgboost.XGBClassifier``, then predicts the labels
    themselves wherever it is loaded.
    """

    _classifier = True
    _target = "classes"

    __init__ = XGBRegressor.__init__
