"""k-means across ranks: scikit-learn's Lloyd, its k-means++ draws, its answer on all rows.

Every rank holds its own rows; the centres are the same everywhere.

- **Preparation**, as scikit-learn's ``KMeans.fit``: the rows are centred by
  the global (unweighted) mean for accurate distances, and the tolerance is
  ``tol`` times the mean of the global per-column variances (the sum of the
  centred rows' squared norms over ``n d``: two small reductions).
- **k-means++** (scikit-learn's ``_kmeans_plusplus``): every rank builds
  the same ``RandomState`` (rank 0's state, broadcast) and draws the same
  numbers.  A draw ``u`` picks the row where the cumulative weighted
  potential crosses ``u`` times the global potential; the ranks' local
  potentials, gathered in rank order, say which rank owns that row (a
  prefix sum), and that rank's row reaches everyone in one reduction.
  Each of the ``2 + log(k)`` candidates' potentials is summed over ranks,
  and the best is chosen from the same sums on every rank.
- **init="random"**: numpy's ``choice(n, size=k, replace=False, p=w/Σw)``
  over the global row ids, reproduced round by round (draw, zero the
  found rows' weights, keep first occurrences).
- **Lloyd**: per iteration, each rank labels its rows with scikit-learn's
  own compiled labelling (256 rows at a time; numpy blocks of
  ``block_rows × k`` distances for rows it does not take) and sums its rows
  per cluster;
  one reduction gives every rank the weighted sums, the cluster weights and
  the number of labels that changed.  Empty clusters are relocated as
  scikit-learn does, to the rows globally farthest from their centres.
  Convergence is scikit-learn's: strict (no label changed on any rank),
  or the squared centre shift within the scaled tolerance.

Float ties: the global cumulative sums are added in a different order
than scikit-learn's single ``cumsum`` (a rank's offset plus its local sum),
and k-means++'s distances come from a different matrix product, so a draw that lands
within rounding (about 1e-16 relative) of a row boundary, or a row at the
same distance from two centres up to rounding, may go the other way.  At
one rank the draws are scikit-learn's own arithmetic.
"""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn import cluster as _skc
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.extmath import row_norms

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    allgather_array,
    allreduce_identical,
    allreduce_minmax,
    allreduce_sum,
)
from mpitrain.utils.fixes import (
    Interval,
    StrOptions,
    lloyd_labels,
    openmp_effective_n_threads,
)
from mpitrain.utils.memory import empty_base_pages
from mpitrain.utils.random import agreed_random_state
from mpitrain.utils.threads import threads_in_force
from mpitrain.utils.validation import FLOAT_DTYPES, GlobalRows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["KMeans", "distance_block_rows"]

#: Bytes of the per-rank block of row-to-centre distances in Lloyd's steps:
#: small enough to stay in cache and to be reused by the allocator (fresh
#: pages for every large temporary cost more than the arithmetic: measured
#: 2.4 s -> 0.9 s for 10 iterations on 200,000 x 50, k = 20, one thread,
#: from 8 MB blocks to 4,096 rows).
DISTANCE_BLOCK_BYTES = 512 << 10


def distance_block_rows(
    n_clusters: int, block_bytes: int = DISTANCE_BLOCK_BYTES
) -> int:
    """Rows labelled at a time so that their ``rows × k`` distances fit ``block_bytes``. Pure."""
    return max(64, block_bytes // (8 * max(n_clusters, 1)))


# ----------------------------------------------------------------------------
# Pure pieces


def squared_distances(
    centers: np.ndarray,
    X: np.ndarray,
    x_squared_norms: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``‖c - x‖²`` of every centre to every row, as scikit-learn expands it. Pure.

    ``-2 C Xᵀ + ‖c‖² + ‖x‖²``, clipped at 0 (scikit-learn's
    ``_euclidean_distances`` for float64 with the rows' norms given).
    ``out``, C-contiguous of shape ``(n_rows, n_centres)``, receives the
    product (returned transposed) instead of a fresh array.
    """
    # X @ Cᵀ (tall times thin) runs about 2.5 times faster than C @ Xᵀ with BLAS;
    # the transposed view keeps the (centres, rows) shape.
    distances = np.matmul(X, -2 * centers.T, out=out).T
    distances += row_norms(centers, squared=True)[:, np.newaxis]
    distances += x_squared_norms[np.newaxis, :]
    np.maximum(distances, 0, out=distances)
    return distances


def label_block(X: np.ndarray, centers: np.ndarray, block_rows: int) -> np.ndarray:
    """Nearest centre of every row, ``block_rows`` rows at a time. Pure.

    Compares ``‖c‖² - 2 x·c`` (the row's own norm does not change the
    argmin), first index on ties, as scikit-learn's Lloyd step does: one
    product per block into a reused buffer, ``‖c‖²`` computed once.
    """
    n, k = X.shape[0], centers.shape[0]
    labels = np.empty(n, dtype=np.int32)
    center_norms = row_norms(centers, squared=True)
    scaled = np.ascontiguousarray(-2 * centers.T)
    buffer = np.empty((min(block_rows, n), k))
    for start in range(0, n, block_rows):
        block = X[start : start + block_rows]
        distances = buffer[: block.shape[0]]
        np.matmul(block, scaled, out=distances)
        distances += center_norms
        labels[start : start + block.shape[0]] = np.argmin(distances, axis=1)
    return labels


def nearest_centres(
    X: np.ndarray,
    sample_weight: np.ndarray,
    centers: np.ndarray,
    block_rows: int,
    n_threads: int = 1,
) -> np.ndarray:
    """Nearest centre of every row: scikit-learn's compiled Lloyd labelling where it applies. Pure.

    C-contiguous float64 rows and centres go to scikit-learn's own chunked
    code (:func:`mpitrain.utils.fixes.lloyd_labels`; 1,000,000 x 50,
    k = 20, one thread: 0.100 s against 0.16 s for :func:`label_block`,
    side by side), on ``n_threads`` threads; other rows, or a release
    without that code, to :func:`label_block`.  Both compare
    ``‖c‖² - 2 x·c`` and take the first index on ties.
    """
    n = X.shape[0]
    if (
        n
        and X.dtype == np.float64
        and X.flags.c_contiguous
        and sample_weight.dtype == np.float64
        and sample_weight.flags.c_contiguous
    ):
        labels = np.empty(n, dtype=np.int32)
        try:
            lloyd_labels(
                X, sample_weight, np.ascontiguousarray(centers), labels, n_threads
            )
            return labels
        except ImportError:
            pass  # a release that moved it: the same labels from numpy
    return label_block(X, centers, block_rows)


def lloyd_step(
    X: np.ndarray,
    sample_weight: np.ndarray,
    centers: np.ndarray,
    block_rows: int,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label this rank's rows, then sum them per cluster. Pure.

    Returns ``(labels, weighted sums of shape (k, d), cluster weights)``.
    Labels: :func:`nearest_centres`.  Sums: one sparse product of the weighted
    one-hot labels with the rows (``n × d`` multiply-adds instead of a
    dense ``k × n × d`` product; measured 0.35 s -> 0.22 s per step on
    1,000,000 x 50, k = 20, one thread).
    """
    n = X.shape[0]
    k = centers.shape[0]
    labels = nearest_centres(X, sample_weight, centers, block_rows, n_threads)
    # int32 row pointers like the labels: scipy then takes the arrays without a copy.
    index_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    pointers = np.arange(n + 1, dtype=index_dtype)
    indices = labels.astype(index_dtype, copy=False)
    one_hot = sparse.csr_matrix((sample_weight, indices, pointers), shape=(n, k))
    sums = np.asarray(one_hot.T @ X).reshape(k, X.shape[1])
    weights = np.bincount(labels, weights=sample_weight, minlength=k)
    return labels, sums, weights


def row_inertia(
    X: np.ndarray,
    sample_weight: np.ndarray,
    centers: np.ndarray,
    labels: np.ndarray,
    block_rows: int,
) -> float:
    """``Σ w ‖x - c_label‖²`` of this block of rows. Pure."""
    total = 0.0
    for start in range(0, X.shape[0], block_rows):
        stop = start + block_rows
        diff = X[start:stop] - centers[labels[start:stop]]
        total += float(np.einsum("ij,ij->i", diff, diff) @ sample_weight[start:stop])
    return total


def average_centers(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_average_centers``: means, empty clusters at the largest one. Pure.

    Replayed in its order: an empty cluster copies the largest cluster's
    row as it stands at that point of the loop.
    """
    centers = sums.copy()
    largest = int(np.argmax(weights))
    for j in range(centers.shape[0]):
        if weights[j] > 0:
            centers[j] *= 1.0 / weights[j]
        else:
            centers[j] = centers[largest]
    return centers


# ----------------------------------------------------------------------------
# Collective pieces


class _Rows:
    """This rank's centred rows and what every rank knows of all ranks' rows."""

    def __init__(self, X: np.ndarray, w: np.ndarray, agreed: GlobalRows):
        self.X = X
        self.w = w
        self.sq_norms = row_norms(X, squared=True)
        self.rows_per_rank = agreed.rows_per_rank
        self.rank = agreed.rank
        self.offset = agreed.offset


def pick_rows(
    rows: _Rows,
    local_values: np.ndarray,
    targets: np.ndarray,
    comm: Intracomm,
    *,
    side: str,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Global row ids where the cumulative sum of ``local_values`` over all rows reaches each target.

    Collective over ``comm``.  numpy's ``searchsorted(cumsum, target,
    side)`` over all ranks' rows in rank order, clipped to the last row: the
    ranks' totals are gathered (bit-identical everywhere), their prefix sums
    say which rank owns each target, and that rank searches its own
    cumulative sum, offset by the prefix.  Returns the ids on every rank.
    """
    # scratch (as long as local_values) takes the cumulative sum: no fresh pages.
    cumulative = np.cumsum(local_values, out=scratch)
    total = cumulative[-1] if cumulative.size else 0.0
    totals = allgather_array(np.array([total]), comm)[:, 0]
    holders = [q for q, n in enumerate(rows.rows_per_rank) if n > 0]
    offsets = np.zeros(len(totals))
    running = 0.0
    for q in range(len(totals)):
        offsets[q] = running
        running = running + totals[q]
    found = np.full(targets.size, -1.0)
    for i, target in enumerate(targets):
        owner = holders[-1]  # clipped: beyond the total, the last row
        for q in holders:
            end = offsets[q] + totals[q]
            if (end >= target) if side == "left" else (end > target):
                owner = q
                break
        if owner == rows.rank:
            # Searched without a shifted copy; a crossing lost to rounding at
            # the end is the slice's last row, as the clip gives.
            local = np.searchsorted(cumulative, target - offsets[owner], side=side)
            found[i] = rows.offset + min(int(local), cumulative.size - 1)
    return allreduce_minmax(found, comm)[1].astype(np.int64)


def gather_rows(
    rows: _Rows, ids: np.ndarray, comm: Intracomm, extra: np.ndarray | None = None
) -> np.ndarray:
    """The rows of global ids ``ids`` (and ``extra`` columns) on every rank. Collective over ``comm``.

    Each owner writes its rows into a zero buffer; one sum gives them to all.
    """
    width = rows.X.shape[1] + (0 if extra is None else extra.shape[1])
    out = np.zeros((ids.size, width))
    mine = (ids >= rows.offset) & (ids < rows.offset + rows.X.shape[0])
    local = ids[mine] - rows.offset
    out[mine, : rows.X.shape[1]] = rows.X[local]
    if extra is not None:
        out[mine, rows.X.shape[1] :] = extra[local]
    return allreduce_sum(out, comm)


def kmeans_plusplus(
    rows: _Rows, n_clusters: int, random_state: np.random.RandomState, comm: Intracomm
) -> np.ndarray:
    """scikit-learn's ``_kmeans_plusplus`` over all ranks' rows. Collective over ``comm``.

    The same ``random_state`` on every rank; returns the initial centres,
    identical everywhere.
    """
    n_local_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, rows.X.shape[1]))
    # Reused buffers: a fresh (rows x trials) array per centre costs more in page
    # faults than its product (measured 0.10 s -> 0.06 s per centre, 1,000,000 rows).
    buffer = np.empty((rows.X.shape[0], n_local_trials))
    weighted = np.empty(rows.X.shape[0])
    scratch = np.empty(rows.X.shape[0])
    # choice(n, p=w/Σw) draws one uniform and searches the normalised cdf ("right").
    u = random_state.random_sample()
    first = pick_rows(
        rows, rows.w, np.array([u * _global_sum(rows.w, comm)]), comm, side="right"
    )
    centers[0] = gather_rows(rows, first, comm)[0]
    closest = np.ascontiguousarray(
        squared_distances(centers[:1], rows.X, rows.sq_norms)[0]
    )
    current_pot = _global_sum(closest, comm, rows.w)
    for c in range(1, n_clusters):
        rand_vals = random_state.uniform(size=n_local_trials) * current_pot
        np.multiply(rows.w, closest, out=weighted)
        candidate_ids = pick_rows(
            rows, weighted, rand_vals, comm, side="left", scratch=scratch
        )
        candidates = gather_rows(rows, candidate_ids, comm)
        distances = squared_distances(candidates, rows.X, rows.sq_norms, out=buffer)
        np.minimum(closest, distances, out=distances)
        candidates_pot = distances @ rows.w
        allreduce_identical(candidates_pot, comm)
        best = int(np.argmin(candidates_pot))
        current_pot = candidates_pot[best]
        # A strided row of the transposed product, copied into the reused array.
        np.copyto(closest, distances[best])
        centers[c] = candidates[best]
    return centers


def random_init(
    rows: _Rows, n_clusters: int, random_state: np.random.RandomState, comm: Intracomm
) -> np.ndarray:
    """numpy's ``choice(n, size=k, replace=False, p=w/Σw)`` over all ranks' rows. Collective.

    numpy draws ``k - found`` uniforms per round, zeroes the found rows'
    probabilities, searches the normalised cdf and keeps the first
    occurrence of each new row, until ``k`` distinct rows are found.
    """
    weights = rows.w.copy()
    found: list[int] = []
    nonzero = _global_sum((weights > 0).astype(np.float64), comm)
    if nonzero < n_clusters:
        raise ValueError("Fewer non-zero entries in p than size")
    while len(found) < n_clusters:
        x = random_state.rand(n_clusters - len(found))
        mine = [
            i - rows.offset
            for i in found
            if rows.offset <= i < rows.offset + weights.size
        ]
        weights[mine] = 0.0
        new = pick_rows(
            rows, weights, x * _global_sum(weights, comm), comm, side="right"
        )
        _, first = np.unique(new, return_index=True)
        found += [int(i) for i in new[np.sort(first)]]
    return gather_rows(rows, np.array(found, dtype=np.int64), comm)


def _global_sum(
    values: np.ndarray, comm: Intracomm, weights: np.ndarray | None = None
) -> float:
    """``Σ values`` (or ``values @ weights``) over all ranks, identical everywhere. Collective."""
    local = values @ weights if weights is not None else values.sum()
    return float(allreduce_identical(np.array([float(local)]), comm)[0])


def relocate_empty_clusters(
    rows: _Rows,
    labels: np.ndarray,
    centers_old: np.ndarray,
    sums: np.ndarray,
    weights: np.ndarray,
    comm: Intracomm,
) -> int:
    """scikit-learn's ``_relocate_empty_clusters_dense`` over all ranks, in place. Collective.

    Every rank finds the same empty clusters (from the reduced weights);
    each offers its ``n_empty`` rows farthest from their centres, the
    global farthest are taken (largest distance first, ties to the lower
    global row), and their owners send the rows, weights and labels in one
    reduction.  Returns the number of empty clusters.
    """
    empty = np.flatnonzero(weights == 0)
    n_empty = empty.size
    if n_empty == 0:
        return 0
    n_local = rows.X.shape[0]
    diff = rows.X - centers_old[labels]
    distances = np.einsum("ij,ij->i", diff, diff)
    offer = np.full((n_empty, 2), [-np.inf, -1.0])
    if n_local:
        take = min(n_empty, n_local)
        top = np.argpartition(distances, -take)[-take:]
        offer[:take, 0] = distances[top]
        offer[:take, 1] = rows.offset + top
    everyone = allgather_array(offer, comm).reshape(-1, 2)
    everyone = everyone[everyone[:, 1] >= 0]
    if everyone[:, 0].max() == 0:
        # More clusters than distinct rows: relocating is pointless (scikit-learn returns too).
        return n_empty
    order = np.lexsort((everyone[:, 1], -everyone[:, 0]))[:n_empty]
    far = everyone[order, 1].astype(np.int64)
    extra = (
        np.column_stack([rows.w, labels.astype(np.float64)])
        if n_local
        else np.zeros((0, 2))
    )
    picked = gather_rows(rows, far, comm, extra=extra)
    d = rows.X.shape[1]
    for new_id, row in zip(empty, picked):
        x, weight, old_id = row[:d], row[d], int(row[d + 1])
        sums[old_id] -= x * weight
        sums[new_id] = x * weight
        weights[new_id] = weight
        weights[old_id] -= weight
    return n_empty


def lloyd(
    rows: _Rows,
    centers_init: np.ndarray,
    max_iter: int,
    tol: float,
    comm: Intracomm,
    block_rows: int,
    n_threads: int = 1,
) -> tuple[np.ndarray, float, np.ndarray, int]:
    """scikit-learn's ``_kmeans_single_lloyd`` over all ranks. Collective over ``comm``.

    Returns ``(labels of this rank's rows, inertia, centres, iterations)``;
    the inertia, centres and iterations are identical on every rank.
    """
    k, d = centers_init.shape
    centers = centers_init.copy()
    labels_old = np.full(rows.X.shape[0], -1, dtype=np.int32)
    labels = labels_old
    strict = False
    reduced = np.empty(k * d + k + 1)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        labels, sums, weights = lloyd_step(
            rows.X, rows.w, centers, block_rows, n_threads
        )
        reduced[: k * d] = sums.ravel()
        reduced[k * d : k * d + k] = weights
        reduced[-1] = np.count_nonzero(labels != labels_old)
        # Identical on every rank: convergence decisions must never differ.
        allreduce_identical(reduced, comm)
        sums = reduced[: k * d].reshape(k, d).copy()
        weights = reduced[k * d : k * d + k].copy()
        relocate_empty_clusters(rows, labels, centers, sums, weights, comm)
        centers_new = average_centers(sums, weights)
        center_shift = np.sqrt(((centers_new - centers) ** 2).sum(axis=1))
        centers = centers_new
        if reduced[-1] == 0:
            strict = True
            break
        if (center_shift**2).sum() <= tol:
            break
        labels_old = labels
    if not strict:
        labels = nearest_centres(rows.X, rows.w, centers, block_rows, n_threads)
    inertia = _global_sum(
        np.array([row_inertia(rows.X, rows.w, centers, labels, block_rows)]), comm
    )
    return labels, inertia, centers, n_iter


def same_clustering(
    labels1: np.ndarray, labels2: np.ndarray, n_clusters: int, comm: Intracomm
) -> bool:
    """scikit-learn's ``_is_same_clustering`` over all ranks' labels. Collective over ``comm``.

    The labellings are the same up to a renaming when one map from the
    first labels to the second fits every row of every rank.
    """
    mapping = np.full(n_clusters, -1, dtype=np.int64)
    pairs = np.unique(labels1.astype(np.int64) * n_clusters + labels2)
    first, second = np.divmod(pairs, n_clusters)
    ok = int(np.unique(first).size == first.size)
    mapping[first] = second
    everyone = allgather_array(np.concatenate([[ok], mapping]), comm)
    if not everyone[:, 0].all():
        return False
    maps = everyone[:, 1:]
    for j in range(n_clusters):
        seen = set(maps[maps[:, j] >= 0, j].tolist())
        if len(seen) > 1:
            return False
    return True


# ----------------------------------------------------------------------------
# Estimator


class KMeans(
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    ClusterMixin,
    DistributedEstimator,
):
    """k-means clustering of all ranks' rows: scikit-learn's answer.

    The parameters and fitted attributes of :class:`sklearn.cluster.KMeans`
    (Lloyd) fitted on all ranks' rows together, with the same draws for the
    same ``random_state``; ``estimator_`` is that fitted scikit-learn KMeans
    (it pickles and predicts without MPI).  ``fit`` is collective;
    ``predict`` and ``transform`` are local to the rows you pass.

    Parameters
    ----------
    n_clusters : int, default=8
    init : {"k-means++", "random"} or array-like of shape (n_clusters, n_features), default="k-means++"
    n_init : "auto" or int, default="auto"
        1 for k-means++ and an array, 10 for "random", as scikit-learn.
    max_iter : int, default=300
    tol : float, default=1e-4
        Relative to the mean of the global per-column variances.
    verbose : int, default=0
        Accepted for scikit-learn's signature; nothing is printed.
    random_state : int, RandomState instance or None, default=None
        Rank 0's generator state is used on every rank.
    copy_x : bool, default=True
        As scikit-learn's: ``False`` centres C-contiguous, writeable float64
        rows in place and adds the mean back when the fit ends (or fails),
        instead of a centred copy of the rank's rows; small rounding
        differences may remain in the rows.  Other rows are copied.
    algorithm : {"lloyd"}, default="lloyd"
        "elkan" is not offered (its bounds would need every rank's rows per step).
    block_rows : int or None, default=None
        Rows at a time per rank where mpitrain's own code computes
        distances (the inertia, and the labels of rows that are not
        C-contiguous float64; scikit-learn's compiled labelling, used for
        the others, takes 256 rows at a time); ``None``: as many as keep
        the ``rows × n_clusters`` distances within 512 KB (at least 64).
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means ``COMM_WORLD``.

    Attributes
    ----------
    estimator_ : sklearn.cluster.KMeans
        Fitted, identical on every rank, without ``labels_`` (this rank's
        labels are in :attr:`labels_`; ``estimator_.predict`` gives any
        row's).
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_local_rows,)
        Labels of this rank's rows.
    inertia_ : float
        Of all ranks' rows.
    n_iter_ : int
    n_features_in_ : int
    n_rows_ : int
    timings_ : dict
        Seconds of this rank: ``init`` and ``lloyd``.
    """

    _sklearn_class = _skc.KMeans
    _own_params = ("comm", "block_rows")
    _parameter_constraints = {
        **_skc.KMeans._parameter_constraints,
        "algorithm": [StrOptions({"lloyd"})],
        "block_rows": [Interval(Integral, 1, None, closed="left"), None],
        "comm": "no_validation",
    }
    _target = None
    _x_checks = {"dtype": FLOAT_DTYPES}
    _forwarded = ("predict", "transform")

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        verbose=0,
        random_state=None,
        copy_x=True,
        algorithm="lloyd",
        block_rows=None,
        comm=None,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.block_rows = block_rows
        self.comm = comm

    @property
    def _n_features_out(self) -> int:
        return self.cluster_centers_.shape[0]

    def _check_params(self) -> None:
        if callable(self.init):
            raise ValueError(
                "a callable init sees only one rank's rows: pass 'k-means++', 'random' or an array"
            )

    def _resolved_n_init(self) -> int:
        """scikit-learn's ``n_init`` for this ``init``. Local."""
        is_array = not isinstance(self.init, str)
        if self.n_init == "auto":
            return 10 if self.init == "random" else 1
        if is_array and self.n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only"
                f" one init in {type(self).__name__} instead of "
                f"n_init={self.n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            return 1
        return int(self.n_init)

    def fit(self, X, y=None, sample_weight=None):
        """Cluster all ranks' rows.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_local_rows,), default=None
            Not used by the initialisation from an array, as in scikit-learn.

        Returns
        -------
        self : object
        """
        with self._fitting(X, None, sample_weight) as fit, ExitStack() as restore:
            lib, n_rows = fit.comm, fit.rows.n_rows
            X = np.asarray(fit.X, dtype=np.float64)
            w = (
                np.ones(X.shape[0])
                if fit.sample_weight is None
                else fit.sample_weight.astype(np.float64)
            )
            if n_rows < self.n_clusters:
                raise ValueError(
                    f"n_samples={n_rows} should be >= n_clusters={self.n_clusters}."
                )
            init = self.init
            if not isinstance(init, str):
                init = np.array(init, dtype=np.float64, copy=True)
                if init.shape != (self.n_clusters, X.shape[1]):
                    raise ValueError(
                        f"The shape of the initial centers {init.shape} does not match "
                        f"the number of clusters {self.n_clusters} and features {X.shape[1]}."
                    )
            n_init = self._resolved_n_init()
            # Global before local: the (unweighted) mean for centring, then the
            # tolerance's mean column variance, which is Σ ‖x - mean‖² / (n d): the
            # centred rows' squared norms, needed anyway.  Two passes over the rows
            # (the checks found them finite) instead of a full column summary.
            mean = allreduce_identical(X.sum(axis=0), lib) / n_rows
            if not self.copy_x and X.flags.c_contiguous and X.flags.writeable:
                # scikit-learn's copy_x=False: centred in place, put back when
                # the fit ends (or fails); no copy of the rows.
                X -= mean
                restore.callback(np.add, X, mean, out=X)
                centred = X
            else:
                # C order: scikit-learn's compiled labelling takes it.  Base
                # pages: numpy's huge-page advice made this copy 3-4 times
                # slower to fault in on a VM (mpitrain.utils.memory).
                centred = np.subtract(X, mean, out=empty_base_pages(X.shape))
            rows = _Rows(centred, w, fit.rows)
            spread = allreduce_identical(np.array([rows.sq_norms.sum()]), lib)[0]
            tol = float(spread / (n_rows * max(X.shape[1], 1)) * self.tol)
            if not isinstance(init, str):
                init -= mean
            random_state = agreed_random_state(self.random_state, lib)
            block_rows = self.block_rows or distance_block_rows(self.n_clusters)
            # The rank's thread budget (the limit set on its BLAS and OpenMP).
            n_threads = threads_in_force()
            timings = {"init": 0.0, "lloyd": 0.0}
            best = None
            for _ in range(n_init):
                tic = time.perf_counter()
                if isinstance(init, str) and init == "k-means++":
                    centers = kmeans_plusplus(rows, self.n_clusters, random_state, lib)
                elif isinstance(init, str):
                    centers = random_init(rows, self.n_clusters, random_state, lib)
                else:
                    centers = init
                timings["init"] += time.perf_counter() - tic
                tic = time.perf_counter()
                labels, inertia, centers, n_iter = lloyd(
                    rows, centers, self.max_iter, tol, lib, block_rows, n_threads
                )
                timings["lloyd"] += time.perf_counter() - tic
                # scikit-learn keeps a better run only if its clustering differs.
                if best is None or (
                    inertia < best[1]
                    and not same_clustering(labels, best[0], self.n_clusters, lib)
                ):
                    best = (labels, inertia, centers, n_iter)
            _return_random_state(self.random_state, random_state)
            labels, inertia, centers, n_iter = best
            present = np.zeros(self.n_clusters)
            present[np.unique(labels)] = 1.0
            distinct = int(np.count_nonzero(allreduce_minmax(present, lib)[1]))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._set_fitted(
            centers + mean,
            labels,
            inertia,
            n_iter,
            n_init,
            X.shape[1],
            fit.rows.dtype,
            n_rows,
        )
        self.timings_ = timings
        return self

    def _set_fitted(
        self, centers, labels, inertia, n_iter, n_init, n_features, dtype, n_rows
    ) -> None:
        """Build ``estimator_`` and mirror its attributes. Local and deterministic."""
        model = self._unfitted_estimator()
        model.n_features_in_ = n_features
        if hasattr(self, "feature_names_in_"):
            model.feature_names_in_ = self.feature_names_in_
        model.cluster_centers_ = np.ascontiguousarray(centers, dtype=dtype)
        model._n_features_out = self.n_clusters
        # No labels_ on estimator_: they would be this rank's rows only, and the
        # model must be the same on every rank (predict does not need them).
        model.inertia_ = float(inertia)
        model.n_iter_ = int(n_iter)
        model._n_threads = openmp_effective_n_threads()
        model._algorithm = "lloyd"
        model._n_init = n_init  # resolved once in fit: its warning is given once
        self.estimator_ = model
        self.cluster_centers_ = model.cluster_centers_
        self.labels_ = labels
        self.inertia_ = model.inertia_
        self.n_iter_ = model.n_iter_
        self.n_features_in_ = n_features
        self.n_rows_ = n_rows

    def fit_predict(self, X, y=None, sample_weight=None):
        """Cluster all ranks' rows; the labels of this rank's rows. Collective over ``comm``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def score(self, X, y=None, sample_weight=None) -> float:
        """Opposite of the inertia of the given rows (scikit-learn's). Local."""
        return self.estimator_.score(X, sample_weight=sample_weight)


def _return_random_state(random_state: Any, used: np.random.RandomState) -> None:
    """Leave the user's generator (or numpy's global one) where scikit-learn would. Local."""
    if not isinstance(random_state, (Integral, np.integer)):
        check_random_state(random_state).set_state(used.get_state())
