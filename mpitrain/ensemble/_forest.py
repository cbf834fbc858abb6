"""Random forests and extra trees across MPI ranks: every rank grows its share, the trees are merged.

A forest is a set of independent trees, so the natural distributed forest
is local fits combined (no raw row leaves its rank):

1. **Global before local.**  The classes (:func:`~mpitrain.utils.multiclass.agree_classes`,
   which also warns when a rank's class proportions differ strongly from
   the global ones), ``class_weight="balanced"`` from the global class
   totals, and every rank's rows are agreed first.
2. **Trees split by rows.**  :func:`trees_per_rank` gives each rank a share
   of ``n_estimators`` proportional to its rows of positive weight (largest
   remainders; a rank without rows gets none).  The trees are numbered
   globally, rank 0's first; tree ``i`` is seeded with :func:`tree_seeds`
   ``(seed, n)[i]``, the ``i``-th draw that scikit-learn itself takes for
   the ``i``-th tree of a forest with that ``random_state``.  A tree's seed
   therefore depends on its global index only, not on which rank grew it;
   on one rank the forest is scikit-learn's, tree for tree.
3. **Local growth.**  Each rank fits a scikit-learn forest of its trees on
   its own rows (bootstrap samples drawn within the rank's rows), with
   ``n_jobs`` threads.
4. **Merge.**  Each tree travels as its node arrays (scikit-learn's
   ``Tree`` state: a structured node table and a value table), packed into
   one float64 block per rank: the sizes first (one small ``allgather``,
   with the memory check of :func:`merged_forest_bytes`), then one
   ``Gatherv`` to rank 0 and one broadcast, both of numpy buffers.  Only the
   per-tree metadata (node count, depth, the ``Tree`` class) is pickled.
   Every rank rebuilds every tree, in the global class space: a tree grown
   on a rank lacking a class gets a zero column for it, never a misaligned
   one.
5. ``estimator_`` is a plain scikit-learn forest holding all the trees,
   identical on every rank (prediction, evaluation and the out-of-bag score
   are local on each rank's rows, so every rank needs every tree).

With ``oob_score=True`` the out-of-bag score is global: for each of its
rows a rank sums the predictions of the trees it grew whose bootstrap
sample missed the row (scikit-learn's ``estimators_samples_``) and of
every tree grown on another rank (none of them saw the row); the score is
then accuracy (classifiers) or R² (regressors) over all ranks' rows, by
reduction (:mod:`mpitrain.metrics`).
"""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING

import numpy as np
from sklearn import ensemble as _sk
from sklearn.base import ClassifierMixin, RegressorMixin, clone
from sklearn.utils import check_random_state, get_tags

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    allgather_array,
    allgather_object,
    allreduce_sum,
    bcast_object,
    bcast_rows_quietly,
    collective_check,
    gatherv_rows,
)
from mpitrain.data import memory_limit, ranks_sharing_memory
from mpitrain.metrics import accuracy, regression_scores
from mpitrain.utils.multiclass import (
    agree_classes,
    class_weights,
)
from mpitrain.utils.threads import threads_in_force
from mpitrain.utils.validation import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "MAX_SEED",
    "trees_per_rank",
    "tree_seeds",
    "local_max_samples",
    "merged_forest_bytes",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
]

#: Seeds of trees are drawn below this bound, as scikit-learn's forests draw them.
MAX_SEED = int(np.iinfo(np.int32).max)

#: Memory needed to gather the merged forest, as multiples of its packed size:
#: the gathered buffer plus the trees rebuilt from it; rank 0 also holds the
#: gathered copy while broadcasting it.
GATHER_COPIES_ROOT = 3
GATHER_COPIES = 2


# --------------------------------------------------------------------------
# Pure functions


def trees_per_rank(n_estimators: int, rows_per_rank) -> np.ndarray:
    """How many of ``n_estimators`` trees each rank grows, in proportion to its rows. Pure.

    Largest remainders: rank ``r`` gets ``floor(n · rows_r / rows)`` trees,
    and the trees left over go to the ranks with the largest remainders
    (ties to the lower rank).  The counts sum to ``n_estimators``, a rank
    without rows gets none, and the answer depends on the arguments only.

    Parameters
    ----------
    n_estimators : int
        Trees of the merged forest (at least 1).
    rows_per_rank : sequence of int
        Rows (of positive weight) of each rank, in rank order; some must be
        positive.

    Returns
    -------
    ndarray of int64, shape (n_ranks,)
    """
    rows = [int(r) for r in rows_per_rank]
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be at least 1, got {n_estimators}")
    if any(r < 0 for r in rows):
        raise ValueError(f"rows per rank must be non-negative, got {rows}")
    total = sum(rows)
    if total == 0:
        raise ValueError("no rank has rows to grow trees on")
    # Exact integer arithmetic: the same answer on every rank and platform.
    base = [n_estimators * r // total for r in rows]
    remainder = [n_estimators * r - b * total for r, b in zip(rows, base)]
    left = n_estimators - sum(base)
    for rank in sorted(range(len(rows)), key=lambda k: (-remainder[k], k))[:left]:
        base[rank] += 1
    return np.array(base, dtype=np.int64)


def tree_seeds(seed: int, n_estimators: int) -> np.ndarray:
    """The ``random_state`` of each tree of the merged forest, by global index. Pure.

    The draws scikit-learn's forests take for their trees from
    ``RandomState(seed)``, in order: tree ``i`` gets the ``i``-th.  Each
    tree's bootstrap sample and its random splits come from its seed.
    """
    return np.random.RandomState(seed).randint(MAX_SEED, size=n_estimators)


def local_max_samples(
    max_samples: int | float | None, n_local: int, n_total: int
) -> int | float | None:
    """This rank's ``max_samples`` for a tree it grows. Pure.

    A tree is grown on its rank's rows only, so it draws the same *share*
    of them as ``max_samples`` is of all rows: ``None`` and a float stay
    as they are (the rank's rows, or that fraction of them); an integer
    ``m`` becomes ``round(m · n_local / n_total)`` (at least 1).
    """
    if (
        max_samples is None
        or isinstance(max_samples, numbers.Real)
        and not (isinstance(max_samples, numbers.Integral))
    ):
        return max_samples
    return max(1, int(round(int(max_samples) * n_local / max(n_total, 1))))


def merged_forest_bytes(node_counts, node_bytes: int, value_width: int) -> int:
    """Bytes of a forest's node arrays packed as float64 rows, one row per node. Pure.

    Each node takes its node record (``node_bytes``, rounded up to whole
    float64) and ``value_width`` float64 of values (classes × outputs).
    This is what travels between ranks and, once more, what the rebuilt
    trees hold.
    """
    columns = -(-int(node_bytes) // 8) + int(value_width)
    return int(np.sum(np.asarray(node_counts, dtype=np.int64))) * columns * 8


# --------------------------------------------------------------------------
# Packing trees into float64 rows and back (Local)


def _pack_trees(
    trees: list, class_columns: np.ndarray | None, width: int
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Each local tree's node and value arrays as a float64 block, one row per node. Local.

    ``class_columns`` maps the local forest's class columns to the global
    ones (classifiers): values are widened to the global classes, zero for
    a class the rank did not see.  Returns ``(blocks, metadata)``: one block
    and one ``(node_count, max_depth)`` per tree.
    """
    meta = []
    parts = []
    for tree in trees:
        state = tree.tree_.__getstate__()
        nodes, values = state["nodes"], state["values"]
        n = int(state["node_count"])
        node_columns = -(-nodes.dtype.itemsize // 8)
        raw = np.zeros((n, node_columns * 8), dtype=np.uint8)
        raw[:, : nodes.dtype.itemsize] = (
            np.ascontiguousarray(nodes[:n])
            .view(np.uint8)
            .reshape(n, nodes.dtype.itemsize)
        )
        if class_columns is not None:
            wide = np.zeros((n, values.shape[1], width), dtype=np.float64)
            wide[:, :, class_columns] = values[:n]
            values = wide
        block = np.empty((n, node_columns + width), dtype=np.float64)
        block[:, :node_columns] = raw.view(np.float64)
        block[:, node_columns:] = values[:n].reshape(n, width)
        parts.append(block)
        meta.append((n, int(state["max_depth"])))
    return parts, meta


def _pack_forest(forest, classes: np.ndarray | None) -> list:
    """A local forest's trees as one float64 block (:func:`_pack_trees`), and what rebuilding them needs. Local.

    ``classes`` are the global classes (classifiers) or ``None``.  Returns
    ``[block, metadata, info]`` (a list, so that ``_merge`` can let go of
    the block); ``info`` holds the ``Tree`` class, its node dtype and the
    trees' ``max_features_``.
    """
    width = len(classes) if classes is not None else 1
    columns = None if classes is None else np.searchsorted(classes, forest.classes_)
    parts, meta = _pack_trees(forest.estimators_, columns, width)
    block = np.concatenate(parts)
    del parts
    first = forest.estimators_[0]
    info = {
        "tree_class": first.tree_.__reduce__()[0],
        "node_dtype": first.tree_.__getstate__()["nodes"].dtype,
        "max_features_": first.max_features_,
    }
    return [block, meta, info]


def _unpack_tree(rows: np.ndarray, node_dtype: np.dtype, width: int, max_depth: int):
    """The ``Tree`` state (``__setstate__``'s dict) of one tree's packed rows. Local."""
    n = rows.shape[0]
    node_columns = -(-node_dtype.itemsize // 8)
    raw = np.ascontiguousarray(rows[:, :node_columns]).view(np.uint8)
    nodes = np.ascontiguousarray(raw[:, : node_dtype.itemsize]).view(node_dtype)
    values = np.ascontiguousarray(rows[:, node_columns:]).reshape(n, 1, width)
    return {
        "max_depth": max_depth,
        "node_count": n,
        "nodes": nodes.reshape(n),
        "values": values,
    }


# --------------------------------------------------------------------------
# Estimators

_FOREST_CONSTRAINTS = {
    "comm": "no_validation",
    # A callable score would need every rank's out-of-bag predictions in one place.
    "oob_score": ["boolean"],
}


class _DistributedForest(DistributedEstimator):
    """Shared fit of the merged forests (prediction: the base's)."""

    _classifier = False
    _combination = "merged"
    _x_checks = {"dtype": FLOAT_DTYPES, "ensure_all_finite": "allow-nan"}

    def _check_params(self) -> None:
        # Parameters are the same on every rank: refuse before any rank grows a tree.
        if self.warm_start:
            raise ValueError(
                "warm_start=True is not supported: the merged forest is grown anew by every fit"
            )
        if self.oob_score and not self.bootstrap:
            raise ValueError("Out of bag estimation only available if bootstrap=True")
        if self.max_samples is not None and not self.bootstrap:
            raise ValueError(
                "`max_sample` cannot be set if `bootstrap=False`. Either switch to "
                "`bootstrap=True` or set `max_sample=None`."
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN as scikit-learn's forest of the same parameters takes it.
        tags.input_tags.allow_nan = get_tags(
            self._unfitted_estimator()
        ).input_tags.allow_nan
        return tags

    @property
    def feature_importances_(self) -> np.ndarray:
        """Impurity-based importances of the merged forest (``estimator_``'s). Local."""
        return self.estimator_.feature_importances_

    def _n_jobs(self) -> int | None:
        """Threads for growing the trees: ``n_jobs``, or the thread limit in force. Local."""
        return self.n_jobs if self.n_jobs is not None else threads_in_force()

    def _agreed_seed(self, comm: Intracomm) -> int:
        """The seed of the merged forest's tree seeds, the same on every rank. Collective."""
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        # None or a RandomState: rank 0's draw, so every rank numbers the same trees.
        drawn = None
        if comm.Get_rank() == 0:
            drawn = int(check_random_state(self.random_state).randint(MAX_SEED))
        return int(bcast_object(drawn, comm))

    def fit(self, X, y, sample_weight=None):
        """Grow this rank's share of the trees on its rows, then merge every rank's trees.

        Collective over ``comm``: every rank calls it with its own rows
        (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
            Missing values (NaN) are allowed where scikit-learn's forest
            allows them.
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        with self._fitting(X, y, sample_weight) as fit:
            comm, rank = fit.comm, fit.rows.rank
            X, y, w = fit.X, fit.y, fit.sample_weight
            classes = None
            fit_weight = w
            if self._classifier:
                agreed = agree_classes(y, w, comm)
                classes = agreed.classes
                fit_weight = self._class_weighted(w, y, agreed)
            positive = len(y) if w is None else int(np.count_nonzero(w))
            rows = allgather_array(np.array([positive], dtype=np.int64), comm)[:, 0]
            counts = trees_per_rank(self.n_estimators, rows)
            seed = self._agreed_seed(comm)
            seeds = tree_seeds(seed, self.n_estimators)
            self.n_jobs_ = self._n_jobs()
            offset = int(counts[:rank].sum())
            mine = int(counts[rank])
            local = None
            oob = None
            own: list = [None, [], None]  # a rank without trees: no block, no metadata
            # Packing copies the trees (it can run out of memory): inside the check too.
            with collective_check(comm, "growing this rank's trees"):
                if mine:
                    local = self._grow(
                        X,
                        y,
                        fit_weight,
                        seed,
                        seeds[offset : offset + mine],
                        offset,
                        fit.rows.n_rows,
                    )
                if self.oob_score:
                    oob = self._local_oob(local, X, classes)
                if local is not None:
                    own = _pack_forest(local, classes)
            del local  # only the packed copy travels: not both at the gather's peak
            trees = self._merge(own, seeds, classes, comm)
            self.estimator_ = self._merged_estimator(trees, classes)
            self.trees_per_rank_ = counts
            if self.oob_score:
                self._global_oob(oob, X, y, counts, rank, comm)
        return self

    def _class_weighted(self, w, y, agreed) -> np.ndarray | None:
        """Sample weights times the global class weights (dict or "balanced"). Local.

        scikit-learn's forests multiply these into the sample weights
        themselves; doing it here, from the global classes and totals, makes
        "balanced" global.  "balanced_subsample" stays per bootstrap sample.
        """
        cw = self.class_weight
        if cw is None or cw == "balanced_subsample":
            return w
        weights = class_weights(cw, agreed)
        expanded = weights[agreed.index(y)] if len(y) else np.zeros(0)
        return expanded if w is None else w * expanded

    def _grow(self, X, y, w, seed: int, seeds, offset: int, n_total: int):
        """This rank's trees, ``seeds`` from global index ``offset`` on: a scikit-learn forest. Local."""
        n_trees = len(seeds)
        params = self._sklearn_params()
        rng = np.random.RandomState(seed)
        # scikit-learn's own way (warm_start) to skip the draws of earlier trees.
        rng.randint(MAX_SEED, size=offset)
        params.update(
            n_estimators=n_trees,
            random_state=rng,
            n_jobs=self.n_jobs_,
            oob_score=False,
            warm_start=False,
            max_samples=local_max_samples(self.max_samples, len(y), n_total),
        )
        if self._classifier and self.class_weight != "balanced_subsample":
            params["class_weight"] = None  # already in w, from the global classes
        forest = self._sklearn_class(**params).fit(X, y, sample_weight=w)
        grown = [int(t.random_state) for t in forest.estimators_]
        if grown != [int(s) for s in seeds]:  # pragma: no cover
            raise RuntimeError(
                "scikit-learn seeded the forest's trees differently from mpitrain's "
                "tree_seeds; this scikit-learn release is not supported"
            )
        return forest

    def _local_oob(self, local, X, classes) -> tuple[np.ndarray, np.ndarray]:
        """Sums of this rank's own trees' out-of-bag predictions on its rows, and their counts. Local."""
        width = len(classes) if classes is not None else 1
        sums = np.zeros((len(X), width))
        seen = np.zeros(len(X), dtype=np.int64)
        if local is None or not len(X):
            return sums, seen
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        columns = None if classes is None else np.searchsorted(classes, local.classes_)
        for tree, inbag in zip(local.estimators_, local.estimators_samples_):
            out = np.ones(len(X), dtype=bool)
            out[inbag] = False
            index = np.flatnonzero(out)
            if not len(index):
                continue
            if columns is None:
                sums[index, 0] += tree.predict(X32[index], check_input=False)
            else:
                sums[np.ix_(index, columns)] += tree.predict_proba(
                    X32[index], check_input=False
                )
            seen[index] += 1
        return sums, seen

    def _merge(self, own: list, seeds, classes, comm: Intracomm) -> list:
        """Every rank's trees, rebuilt on every rank in global order. Collective over ``comm``.

        ``own``: this rank's trees as :func:`_pack_forest` packs them
        (``[None, [], None]`` on a rank without trees).  It is emptied, so
        that its block is freed once gathered.
        """
        from mpitrain.report import format_bytes

        block, meta, info = own
        own.clear()
        width = len(classes) if classes is not None else 1
        everyone = allgather_object((meta, info), comm)
        info = next(i for _, i in everyone if i is not None)
        all_meta = [m for rank_meta, _ in everyone for m in rank_meta]
        node_dtype = np.dtype(info["node_dtype"])
        packed = merged_forest_bytes(
            [n for n, _ in all_meta], node_dtype.itemsize, width
        )
        rank = comm.Get_rank()
        copies = GATHER_COPIES_ROOT if rank == 0 else GATHER_COPIES
        # The same on every rank: it decides whether the ranks count their node's ranks.
        ranks_on_node = ranks_sharing_memory(packed * GATHER_COPIES_ROOT, comm)
        with collective_check(comm, "checking memory for the merged forest"):
            limit, source = memory_limit(ranks_on_node)
            if limit is not None and packed * copies > limit:
                raise MemoryError(
                    f"the merged forest of {len(all_meta)} trees "
                    f"({sum(n for n, _ in all_meta):,} nodes) takes {format_bytes(packed)}; "
                    f"gathering it on every rank needs about {format_bytes(packed * copies)} "
                    f"on this rank but a rank may use {format_bytes(limit)} ({source}); "
                    "grow smaller trees (max_depth, min_samples_leaf, max_leaf_nodes), "
                    "fewer trees, or give each rank more memory"
                )
        node_columns = -(-node_dtype.itemsize // 8)
        if block is None:
            block = np.zeros((0, node_columns + width), dtype=np.float64)
        gathered = gatherv_rows(block, comm, what="gathering the trees")
        del block
        merged = bcast_rows_quietly(gathered, comm)
        del gathered
        template = self._tree_template()
        n_features = self.n_features_in_
        n_classes = np.array([width], dtype=np.intp)
        trees = []
        start = 0
        # Agreed: a rank failing here (memory) must not leave the others in the next collective.
        with collective_check(comm, "rebuilding the merged trees"):
            for index, (n, depth) in enumerate(all_meta):
                tree = clone(template).set_params(random_state=int(seeds[index]))
                state = _unpack_tree(
                    merged[start : start + n], node_dtype, width, depth
                )
                tree.tree_ = info["tree_class"](n_features, n_classes, 1)
                tree.tree_.__setstate__(state)
                tree.n_features_in_ = n_features
                tree.n_outputs_ = 1
                tree.max_features_ = info["max_features_"]
                if classes is not None:
                    tree.classes_ = np.arange(width, dtype=np.float64)
                    tree.n_classes_ = np.int64(width)
                trees.append(tree)
                start += n
        return trees

    def _tree_template(self):
        """The unfitted tree every tree of the forest is a clone of (the forest's parameters). Local."""
        unfitted = self._unfitted_estimator()
        return clone(unfitted.estimator).set_params(
            **{p: getattr(unfitted, p) for p in unfitted.estimator_params}
        )

    def _merged_estimator(self, trees: list, classes):
        """A plain scikit-learn forest holding ``trees``. Local."""
        forest = self._unfitted_estimator()
        forest.estimator_ = clone(forest.estimator)
        forest.estimators_ = trees
        forest.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            forest.feature_names_in_ = self.feature_names_in_
        forest.n_outputs_ = 1
        if classes is not None:
            forest.classes_ = classes
            forest.n_classes_ = len(classes)
        return forest

    def _global_oob(self, oob, X, y, counts, rank: int, comm: Intracomm) -> None:
        """Out-of-bag predictions of this rank's rows by every tree, and the global score. Collective."""
        sums, seen = oob
        if len(X):
            X32 = np.ascontiguousarray(X, dtype=np.float32)
            start = int(counts[:rank].sum())
            own = range(start, start + int(counts[rank]))
            for index, tree in enumerate(self.estimator_.estimators_):
                if index in own:
                    continue
                if self._classifier:
                    sums += tree.predict_proba(X32, check_input=False)
                else:
                    sums[:, 0] += tree.predict(X32, check_input=False)
                seen += 1
        missing = int(allreduce_sum(np.array([np.sum(seen == 0)]), comm)[0])
        if missing:
            warnings.warn(
                f"{missing:,} rows have no out-of-bag prediction (every tree's bootstrap "
                "sample holds them): too few trees for a reliable out-of-bag estimate",
                UserWarning,
                stacklevel=3,
            )
        average = sums / np.maximum(seen, 1)[:, None]
        if self._classifier:
            self.oob_decision_function_ = average
            predicted = self.estimator_.classes_[np.argmax(average, axis=1)]
            score = accuracy(y, predicted, comm=comm)
        else:
            self.oob_prediction_ = average[:, 0]
            score = regression_scores(y, average[:, 0], None, comm=comm)["r2"]
        self.oob_score_ = float(score)
        self.estimator_.oob_score_ = float(score)


_SHARED_DOC = """
    ``fit`` is collective over ``comm``: every rank calls it with its own rows
    (possibly none).  Each rank grows its share of the trees
    (:func:`trees_per_rank`) on its own rows; the trees are merged into one
    forest on every rank (see the module docstring and ``docs/forests.md``).

    Parameters
    ----------
    n_estimators : int, default=100
        Trees of the **merged** forest, split across ranks in proportion to
        their rows.
    criterion, max_depth, min_samples_split, min_samples_leaf, min_weight_fraction_leaf, max_features, max_leaf_nodes, min_impurity_decrease, ccp_alpha, monotonic_cst, verbose
        As in scikit-learn; each tree is grown on its rank's rows.
    bootstrap : bool
        Bootstrap samples are drawn within each rank's rows.
    oob_score : bool, default=False
        The global out-of-bag score (accuracy or R², unweighted as in
        scikit-learn): every tree grown on another rank is out of bag for
        this rank's rows, and so are this rank's trees whose bootstrap
        sample missed the row.  A callable is not supported.
    n_jobs : int or None, default=None
        Threads per rank for growing the trees.  ``None``: the thread limit
        in force when ``fit`` runs (the smallest of the process's BLAS and
        OpenMP limits), which ``--threads-per-rank``
        (:func:`mpitrain.workflow.limit_threads`) sets.  The fitted
        ``estimator_`` keeps the parameter as given (so it predicts with
        scikit-learn's default, one thread, unless ``n_jobs`` is set).
    random_state : int, RandomState instance or None, default=None
        Tree ``i`` of the merged forest gets ``tree_seeds(random_state, n)[i]``,
        whichever rank grows it.  ``None`` or a RandomState: rank 0 draws the
        seed.  On one rank the forest equals scikit-learn's.
    warm_start : bool, default=False
        Only False.
    max_samples : int, float or None, default=None
        Per tree: ``None`` all of its rank's rows; a float, that share of
        them; an integer ``m``, the share ``m / n_rows`` of them (the same
        share of the rank's rows as ``m`` is of all rows).
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.

    Attributes
    ----------
    estimator_
        The plain scikit-learn forest of all trees, identical on every rank;
        it saves, loads and predicts without MPI.  Its ``estimators_samples_``
        is not available (a tree's sample is of its own rank's rows).
    trees_per_rank_ : ndarray of int
        Trees grown on each rank.
    n_jobs_ : int
        The threads this rank grew its trees with.
    feature_importances_ : ndarray of shape (n_features,)
        The merged forest's impurity-based importances.
    oob_score_ : float
        With ``oob_score``: the global score (also on ``estimator_``).
    n_features_in_, feature_names_in_
"""


class _ForestClassifier(ClassifierMixin, _DistributedForest):
    """Shared parts of the merged forest classifiers."""

    _classifier = True
    _target = "classes"

    @property
    def classes_(self) -> np.ndarray:
        """The classes of all ranks."""
        return self.estimator_.classes_


class _ForestRegressor(RegressorMixin, _DistributedForest):
    """Shared parts of the merged forest regressors."""


class RandomForestClassifier(_ForestClassifier):
    __doc__ = (
        """A random forest classifier over rows split across MPI ranks, merged from every rank's trees.

    scikit-learn's :class:`sklearn.ensemble.RandomForestClassifier` parameters
    plus ``comm``.  Classes are global: a rank lacking a class still grows
    trees that vote in the global class space (a zero probability for it).
    ``class_weight="balanced"`` uses the class totals of all ranks;
    "balanced_subsample" each tree's bootstrap sample.
    When a rank's class proportions differ strongly from the global ones a
    :class:`~mpitrain.utils.multiclass.ClassProportionWarning` is issued:
    that rank's trees learn its class mix only.
"""
        + _SHARED_DOC
        + """    classes_ : ndarray
    oob_decision_function_ : ndarray of shape (n_local_rows, n_classes)
        With ``oob_score``: this rank's rows' out-of-bag class probabilities.
    """
    )

    _sklearn_class = _sk.RandomForestClassifier
    _parameter_constraints = {
        **_sk.RandomForestClassifier._parameter_constraints,
        **_FOREST_CONSTRAINTS,
    }

    def __init__(
        self,
        n_estimators=100,
        *,
        criterion="gini",
        max_depth=None,
        min_samples_split=2,
        min_samples_leaf=1,
        min_weight_fraction_leaf=0.0,
        max_features="sqrt",
        max_leaf_nodes=None,
        min_impurity_decrease=0.0,
        bootstrap=True,
        oob_score=False,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        class_weight=None,
        ccp_alpha=0.0,
        max_samples=None,
        monotonic_cst=None,
        comm=None,
    ):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.oob_score = oob_score
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.ccp_alpha = ccp_alpha
        self.max_samples = max_samples
        self.monotonic_cst = monotonic_cst
        self.comm = comm


class ExtraTreesClassifier(_ForestClassifier):
    __doc__ = (
        """An extra-trees classifier over rows split across MPI ranks, merged from every rank's trees.

    scikit-learn's :class:`sklearn.ensemble.ExtraTreesClassifier` parameters
    plus ``comm``; classes and class weights as for
    :class:`RandomForestClassifier`.  Without bootstrap (the default) each
    tree is grown on all of its rank's rows.
"""
        + _SHARED_DOC
        + """    classes_ : ndarray
    oob_decision_function_ : ndarray of shape (n_local_rows, n_classes)
    """
    )

    _sklearn_class = _sk.ExtraTreesClassifier
    _parameter_constraints = {
        **_sk.ExtraTreesClassifier._parameter_constraints,
        **_FOREST_CONSTRAINTS,
    }

    def __init__(
        self,
        n_estimators=100,
        *,
        criterion="gini",
        max_depth=None,
        min_samples_split=2,
        min_samples_leaf=1,
        min_weight_fraction_leaf=0.0,
        max_features="sqrt",
        max_leaf_nodes=None,
        min_impurity_decrease=0.0,
        bootstrap=False,
        oob_score=False,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        class_weight=None,
        ccp_alpha=0.0,
        max_samples=None,
        monotonic_cst=None,
        comm=None,
    ):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.oob_score = oob_score
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.ccp_alpha = ccp_alpha
        self.max_samples = max_samples
        self.monotonic_cst = monotonic_cst
        self.comm = comm


class RandomForestRegressor(_ForestRegressor):
    __doc__ = (
        """A random forest regressor over rows split across MPI ranks, merged from every rank's trees.

    scikit-learn's :class:`sklearn.ensemble.RandomForestRegressor` parameters
    plus ``comm`` (one target).
"""
        + _SHARED_DOC
        + """    oob_prediction_ : ndarray of shape (n_local_rows,)
        With ``oob_score``: this rank's rows' out-of-bag predictions.
    """
    )

    _sklearn_class = _sk.RandomForestRegressor
    _parameter_constraints = {
        **_sk.RandomForestRegressor._parameter_constraints,
        **_FOREST_CONSTRAINTS,
    }

    def __init__(
        self,
        n_estimators=100,
        *,
        criterion="squared_error",
        max_depth=None,
        min_samples_split=2,
        min_samples_leaf=1,
        min_weight_fraction_leaf=0.0,
        max_features=1.0,
        max_leaf_nodes=None,
        min_impurity_decrease=0.0,
        bootstrap=True,
        oob_score=False,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        ccp_alpha=0.0,
        max_samples=None,
        monotonic_cst=None,
        comm=None,
    ):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.oob_score = oob_score
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.ccp_alpha = ccp_alpha
        self.max_samples = max_samples
        self.monotonic_cst = monotonic_cst
        self.comm = comm


class ExtraTreesRegressor(_ForestRegressor):
    __doc__ = (
        """An extra-trees regressor over rows split across MPI ranks, merged from every rank's trees.

    scikit-learn's :class:`sklearn.ensemble.ExtraTreesRegressor` parameters
    plus ``comm`` (one target).
"""
        + _SHARED_DOC
        + """    oob_prediction_ : ndarray of shape (n_local_rows,)
    """
    )

    _sklearn_class = _sk.ExtraTreesRegressor
    _parameter_constraints = {
        **_sk.ExtraTreesRegressor._parameter_constraints,
        **_FOREST_CONSTRAINTS,
    }

    def __init__(
        self,
        n_estimators=100,
        *,
        criterion="squared_error",
        max_depth=None,
        min_samples_split=2,
        min_samples_leaf=1,
        min_weight_fraction_leaf=0.0,
        max_features=1.0,
        max_leaf_nodes=None,
        min_impurity_decrease=0.0,
        bootstrap=False,
        oob_score=False,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        ccp_alpha=0.0,
        max_samples=None,
        monotonic_cst=None,
        comm=None,
    ):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.oob_score = oob_score
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.ccp_alpha = ccp_alpha
        self.max_samples = max_samples
        self.monotonic_cst = monotonic_cst
        self.comm = comm
