"""Principal component analysis across ranks: scikit-learn's answer on all rows.

Two routes to the same fitted :class:`sklearn.decomposition.PCA`:

- **covariance** (``svd_solver="auto"`` or ``"covariance_eigh"``, the
  default): the pooled scatter matrix ``Σ (x - m)(x - m)ᵀ`` of all ranks'
  rows: the exact ridge's :class:`mpitrain.stats.StatisticsAccumulator`
  (streamed chunk by chunk, shifted so that no large-mean cancellation
  happens, with its compiled Gram kernel up to 255 features; wider rows
  with a small mean take one ``syrk`` over the rows as they lie); pooled by
  :func:`mpitrain.stats.allreduce_statistics`; rank 0 takes its symmetric
  eigendecomposition, as scikit-learn's ``svd_solver="covariance_eigh"``
  does.  One pass over the rows, memory ``O(d²)`` per rank whatever the
  row count: rows can stream (:meth:`PCA.fit_statistics`).  It squares the
  condition number: a direction whose variance is below about ``1e-16``
  times the largest one is lost in rounding.
- **TSQR** (``svd_solver="full"``): a tall-skinny QR.  The ranks first
  agree on the global mean; each rank factors its centred block
  ``X_r - m = Q_r R_r`` (itself block by block, :func:`centred_r_factor`);
  rank 0 stacks the ``R_r`` (at most ``d`` rows each), factors them again
  and takes the SVD of the final ``R``, whose singular values and right
  singular vectors are those of all centred rows.  No squaring: the
  accuracy of scikit-learn's ``svd_solver="full"`` on ill-conditioned
  data.  Two passes over the rows in memory (the mean, then the QR) and
  about twice the covariance route's flops.

Both use scikit-learn's own post-processing rules: ``svd_flip``'s sign
convention (from the right singular vectors), ``n_components`` as an int,
a variance fraction or ``"mle"`` (scikit-learn's ``_infer_dimension``,
wrapped in :mod:`mpitrain.utils.fixes`), ``noise_variance_`` as the mean
of the dropped variances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import linalg
from scipy.linalg.blas import dsyrk as _dsyrk
from sklearn import decomposition as _skd
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.extmath import svd_flip

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    allreduce_sum,
    bcast_array,
    collective_check,
    gatherv_rows,
)
from mpitrain.stats import (
    LinearStatistics,
    StatisticsAccumulator,
    allreduce_statistics,
    check_gram_fits,
    check_model_rank,
    check_statistics,
    pool_and_solve,
)
from mpitrain.utils.fixes import Interval, StrOptions, infer_pca_dimension
from mpitrain.utils.validation import FLOAT_DTYPES, require_rows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "PCA",
    "pca_statistics",
    "PCASpectrum",
    "spectrum_from_scatter",
    "centred_r_factor",
]

#: The solvers this PCA offers: the two that are exact across ranks.
_SOLVERS = ("auto", "covariance_eigh", "full")


#: The one-product route is taken while no column's raw sum of squares exceeds
#: this many times its centred one: then ``XᵀX - n m mᵀ`` loses at most four of
#: float64's sixteen digits to cancellation (scikit-learn's own covariance_eigh
#: subtracts the same way, without a limit).
_CANCELLATION_LIMIT = 1e4
#: Up to this many features the one-product route goes chunk by chunk: a
#: ``syrk`` of each chunk into the running product, and the chunk's column
#: sum while it is still in cache.  OpenBLAS packs a tall, narrow operand
#: slowly; one thread, side by side, the column sum and one ``syrk`` over
#: all rows against 1 MB chunks: 0.234 / 0.105 s at 5 features (10,000,000
#: rows), 0.144 / 0.088 s at 20, 0.149 / 0.127 s at 50 (1,000,000 rows),
#: 0.205 / 0.181 s at 100; equal at 200, and slower chunked at 256.
_CHUNKED_MAX_FEATURES = 128
_CHUNK_BYTES = 1 << 20


def raw_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column sums ``Σ x`` and the product ``XᵀX`` of float64 rows as they lie. Pure.

    Up to ``_CHUNKED_MAX_FEATURES`` features, in C order, chunk by chunk:
    each chunk's ``syrk`` is added into the running product in place
    (BLAS ``beta = 1``) and its column sums are taken while it is in cache,
    so the rows are read from memory once.  Otherwise one column sum and
    one ``syrk`` over all rows.  A non-finite value leaves a non-finite sum.
    """
    n, d = X.shape
    if d > _CHUNKED_MAX_FEATURES or not X.flags.c_contiguous:
        return X.sum(axis=0), X.T @ X  # numpy recognises the transpose: syrk
    rows = max(256, _CHUNK_BYTES // (8 * d))
    ones = np.ones(min(rows, n))
    total = np.zeros(d)
    product = np.zeros((d, d), order="F")
    for start in range(0, n, rows):
        chunk = X[start : start + rows]
        # chunk.T is Fortran-ordered (no copy); only the upper triangle is summed.
        product = _dsyrk(1.0, chunk.T, beta=1.0, c=product, overwrite_c=1)
        total += ones[: chunk.shape[0]] @ chunk
    upper = np.triu(product)
    return total, upper + np.triu(upper, 1).T


def pca_statistics(X: np.ndarray, first_row: int = 0) -> LinearStatistics:
    """The scatter statistics of this rank's rows (no target). Pure.

    Count, mean and centred scatter ``Σ (x - mean)(x - mean)ᵀ``.  Where
    the accumulator's compiled kernel repays loading it
    (:meth:`~mpitrain.stats.StatisticsAccumulator.uses_kernel`), from the exact ridge's
    accumulator, whose kernel shifts each chunk before its products so that
    nothing cancels, and names a non-finite row (0.072 s against 0.127 s
    for the chunked ``syrk`` below on 1,000,000 x 50, one thread, side by
    side; it is used from 1.5e9 rows x columns², about 580,000 rows at 50
    features).  Otherwise float64 rows whose
    mean is small beside their spread (no column's ``Σ x²`` above ``1e4``
    times its ``Σ (x - mean)²``) come from :func:`raw_moments` of the rows
    as they lie, with no copy; other rows from the accumulator's BLAS path.

    ``first_row`` is the global number of this rank's first row: a
    non-finite value is reported at its row in all ranks' rows.
    """
    n, d = X.shape
    # No expected_rows: it would start loading the kernel on a thread that
    # this thread then waits for at once (the rows are all here already).
    acc = StatisticsAccumulator(d, 0)
    if n and X.dtype == np.float64 and not acc.uses_kernel(n):
        # Huge values overflow the products (numpy warns); the accumulator
        # below then names the row, which says more than the warning.
        with np.errstate(invalid="ignore", over="ignore"):
            total, gram = raw_moments(X)
        if np.isfinite(total).all():
            mean = total / n
            raw = np.diag(gram).copy()
            scatter = gram
            with np.errstate(invalid="ignore", over="ignore"):
                scatter -= n * np.outer(mean, mean)
            centred = np.diag(scatter)
            if (
                np.isfinite(raw).all()
                and (raw <= _CANCELLATION_LIMIT * np.maximum(centred, 0.0)).all()
            ):
                return LinearStatistics(n, float(n), mean, scatter, d, d)
    acc.add(X, np.empty((n, 0)), first_row=first_row)
    return acc.result()


def _check_finite_scatter(local: LinearStatistics) -> None:
    """Raise if this rank's scatter is not finite (NaN input, or overflow). Local."""
    if not np.isfinite(local.scatter).all():
        raise ValueError(
            "Input contains NaN or infinity, or sums of squares overflowed float64"
        )


class PCASpectrum:
    """The full spectrum of centred rows: what every route hands the post-processing.

    Attributes
    ----------
    singular_values : ndarray of shape (L,)
        Singular values of the centred rows, descending.
    explained_variance : ndarray of shape (L,)
        ``singular_values² / (n_samples - 1)`` (or the covariance's eigenvalues).
    components : ndarray of shape (L, n_features)
        Right singular vectors, signs not yet flipped.
    """

    def __init__(
        self,
        singular_values: np.ndarray,
        explained_variance: np.ndarray,
        components: np.ndarray,
    ):
        self.singular_values = singular_values
        self.explained_variance = explained_variance
        self.components = components


def spectrum_from_scatter(scatter: np.ndarray, n_samples: int) -> PCASpectrum:
    """The spectrum from a pooled scatter matrix, as ``covariance_eigh`` computes it. Pure.

    ``C = scatter / (n - 1)``; eigenvalues descending, negatives (rounding)
    clipped to 0, ``S = sqrt(λ (n - 1))``.
    """
    cov = scatter / (n_samples - 1)
    eigenvals, eigenvecs = np.linalg.eigh(cov)
    eigenvals = np.flip(eigenvals)
    eigenvecs = np.flip(eigenvecs, axis=1)
    eigenvals[eigenvals < 0.0] = 0.0
    return PCASpectrum(
        np.sqrt(eigenvals * (n_samples - 1)),
        eigenvals,
        np.ascontiguousarray(eigenvecs.T),
    )


def spectrum_from_r(r_factor: np.ndarray, n_samples: int) -> PCASpectrum:
    """The spectrum from the final ``R`` of a TSQR, as ``svd_solver="full"`` computes it. Pure.

    ``R`` has the singular values and right singular vectors of the
    centred rows (``A = Q R`` with orthonormal ``Q``).
    """
    _, s, vt = linalg.svd(r_factor, full_matrices=False)
    return PCASpectrum(s, s**2 / (n_samples - 1), vt)


def spectrum_on_root(
    compute: Callable[[], PCASpectrum],
    size: int,
    n_features: int,
    comm: Intracomm,
    what: str,
) -> PCASpectrum:
    """Rank 0 computes a spectrum of ``size`` components; every rank gets it. Collective over ``comm``.

    Only rank 0 decomposes (``eigh`` or the SVD may round differently on
    different ranks); a failure there is raised alike on every rank, and
    the result travels as one float64 buffer.
    """
    d = n_features
    packed = np.zeros(size * d + 2 * size)
    with collective_check(comm, what):
        if comm.Get_rank() == 0:
            spectrum = compute()
            packed[: size * d] = spectrum.components.ravel()
            packed[size * d : size * d + size] = spectrum.explained_variance
            packed[size * d + size :] = spectrum.singular_values
    bcast_array(packed, comm)
    return PCASpectrum(
        packed[size * d + size :],
        packed[size * d : size * d + size],
        packed[: size * d].reshape(size, d),
    )


#: Rows factored at a time by a rank's local TSQR.
_QR_BLOCK_ROWS = 4096


def _r_factor(block: np.ndarray) -> np.ndarray:
    """``R`` of the QR of ``block`` (at most ``n_features`` rows). Pure."""
    if block.shape[0] == 0:
        return np.zeros((0, block.shape[1]))
    # numpy's mode="r" is the economic R, min(n, d) x d (scipy's would be n x d).
    return np.linalg.qr(block, mode="r")


def centred_r_factor(
    X: np.ndarray, mean: np.ndarray, block_rows: int = _QR_BLOCK_ROWS
) -> np.ndarray:
    """``R`` of the QR of ``X - mean``, factored block by block (TSQR within a rank). Pure.

    ``R ← qr([R; X_b - mean])`` for blocks of ``max(block_rows, 4 d)``
    rows: each factorisation fits in cache (measured 3.8 times faster than
    one QR of a 200,000 x 50 block, one thread) and only one centred block
    exists at a time.
    """
    n, d = X.shape
    rows = max(block_rows, 4 * d)
    r_factor = np.zeros((0, d))
    for start in range(0, n, rows):
        block = np.asarray(X[start : start + rows], dtype=np.float64) - mean
        r_factor = _r_factor(np.concatenate([r_factor, block]))
    return r_factor


def _n_components_kept(
    n_components: Any, ratio: np.ndarray, variance: np.ndarray, n_samples: int
) -> int:
    """How many components scikit-learn keeps for ``n_components``. Pure."""
    if n_components == "mle":
        return int(infer_pca_dimension(variance, n_samples))
    if 0 < n_components < 1.0:
        # side="right": the kept variance is always above the fraction (scikit-learn #15669).
        return int(np.searchsorted(np.cumsum(ratio), n_components, side="right") + 1)
    return int(n_components)


class PCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, DistributedEstimator):
    """Principal component analysis of all ranks' rows.

    The parameters and fitted attributes of
    :class:`sklearn.decomposition.PCA` fitted on all ranks' rows together;
    ``estimator_`` is that fitted scikit-learn PCA (it pickles and
    transforms without MPI).  ``fit`` is collective; ``transform`` and
    ``inverse_transform`` are local to the rows you pass.

    Parameters
    ----------
    n_components : int, float, "mle" or None, default=None
        Components kept: a count, the fraction of variance to explain
        (``0 < n_components < 1``), ``"mle"`` (Minka's estimate, needs as
        many rows as features) or all (``min(n_samples, n_features)``).
    copy : bool, default=True
        Passed to ``estimator_``.
    whiten : bool, default=False
        Scale the projected rows to unit variance.
    svd_solver : {"auto", "covariance_eigh", "full"}, default="auto"
        ``"auto"`` and ``"covariance_eigh"``: the pooled covariance (one
        pass, streams, squares the condition number).  ``"full"``: TSQR,
        the exact SVD of the centred rows without squaring (rows in
        memory).  scikit-learn's randomized and ARPACK solvers are not
        offered: they would not give its answer across ranks.
    tol, iterated_power, n_oversamples, power_iteration_normalizer, random_state
        scikit-learn's parameters of the solvers not offered; kept so the
        same parameters can be passed, unused.
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.decomposition.PCA
    components_, explained_variance_, explained_variance_ratio_,
    singular_values_, mean_, n_components_, n_samples_, noise_variance_,
    n_features_in_
        As scikit-learn computes them on all rows.
    solver_ : {"covariance_eigh", "tsqr"}
        The route taken.
    timings_ : dict
        Seconds of this rank: ``local_compute``, ``communicate``, ``solve``.
    """

    _sklearn_class = _skd.PCA
    _parameter_constraints = {
        "n_components": [
            Interval(Integral, 0, None, closed="left"),
            Interval(Real, 0, 1, closed="neither"),
            StrOptions({"mle"}),
            None,
        ],
        "copy": ["boolean"],
        "whiten": ["boolean"],
        "svd_solver": [StrOptions(set(_SOLVERS))],
        "tol": [Interval(Real, 0, None, closed="left")],
        "iterated_power": [
            StrOptions({"auto"}),
            Interval(Integral, 0, None, closed="left"),
        ],
        "n_oversamples": [Interval(Integral, 1, None, closed="left")],
        "power_iteration_normalizer": [StrOptions({"auto", "QR", "LU", "none"})],
        "random_state": ["random_state"],
        "comm": "no_validation",
    }
    _target = None
    # Non-finite values are found while the rows are summed (the accumulator names
    # the row) or factored: no separate pass over the rows.
    _x_checks = {"dtype": FLOAT_DTYPES, "ensure_all_finite": False}

    def __init__(
        self,
        n_components=None,
        *,
        copy=True,
        whiten=False,
        svd_solver="auto",
        tol=0.0,
        iterated_power="auto",
        n_oversamples=10,
        power_iteration_normalizer="auto",
        random_state=None,
        comm=None,
    ):
        self.n_components = n_components
        self.copy = copy
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.tol = tol
        self.iterated_power = iterated_power
        self.n_oversamples = n_oversamples
        self.power_iteration_normalizer = power_iteration_normalizer
        self.random_state = random_state
        self.comm = comm

    @property
    def _n_features_out(self) -> int:
        return self.n_components_

    def fit(self, X, y=None):
        """Fit the model on all ranks' rows.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        with self._fitting(X) as fit:
            X, lib = fit.X, fit.comm
            if self.svd_solver == "full":
                self._fit_tsqr(X, fit.rows.n_rows, fit.rows.offset, lib)
            else:
                check_gram_fits(lib, X.shape[1], 0)
                tic = time.perf_counter()
                local = None
                with collective_check(lib, "computing local statistics"):
                    local = pca_statistics(X, first_row=fit.rows.offset)
                    _check_finite_scatter(local)
                self._fit_pooled(local, lib, time.perf_counter() - tic)
        return self

    def fit_statistics(self, local: LinearStatistics, *, every_rank: bool = True):
        """Fit from this rank's scatter statistics, accumulated elsewhere.

        For rows that never sit in memory at once: accumulate them block by
        block with ``mpitrain.stats.StatisticsAccumulator(n_features, 0)``
        (zero target columns), then call this.  The covariance route only.
        Collective over ``comm``.

        Parameters
        ----------
        local : LinearStatistics
            This rank's statistics (of no rows, on a rank that has none).
        every_rank : bool, default=True
            Every rank calls this and gets the fitted model.  ``False``: rank
            0 alone calls it and keeps the model, while the other ranks call
            :func:`mpitrain.stats.contribute_statistics` with their
            statistics instead (no model, and no scikit-learn, there).

        Returns
        -------
        self : object
        """

        def prepare() -> None:
            if self.svd_solver == "full":
                raise ValueError(
                    "fit_statistics() pools the covariance: it needs svd_solver='auto' or "
                    "'covariance_eigh' (TSQR factors the rows themselves)"
                )
            if local.mean.size != local.n_features:
                raise ValueError("PCA takes statistics without target columns")

        with self._fit_comm(every_rank) as lib:
            if every_rank:
                # Agreed: a rank whose statistics carry targets is named everywhere.
                with collective_check(lib, "preparing the fit from statistics"):
                    prepare()
            else:
                # Rank 0 alone: what it alone can refuse must reach the others.
                check_model_rank(lib, keeps_model=True, prepare=prepare)
            check_statistics(local, lib, local.n_features)
            self.n_features_in_ = local.n_features
            if every_rank:
                with collective_check(lib, "computing local statistics"):
                    _check_finite_scatter(local)
                self._fit_pooled(local, lib, 0.0)
                return self
            # The default step name: the other ranks' messages must be the same.
            pooled = pool_and_solve(local, lib, self._decompose)
        self.timings_ = {"local_compute": 0.0, **pooled.timings}
        return self

    def _decompose(self, stats: LinearStatistics) -> None:
        """Rank 0 alone: scikit-learn's checks, the spectrum and the fitted attributes. Local."""
        n, d = stats.count, stats.n_features
        self._check_covariance_rows(n, d)
        spectrum = spectrum_from_scatter(stats.scatter, n)
        self._set_fitted(spectrum, stats.mean, n, d, "covariance_eigh")

    def _check_covariance_rows(self, n: int, d: int) -> None:
        """The covariance route's checks of the pooled rows, as scikit-learn's. Pure."""
        if n < 2:
            # scikit-learn's covariance_eigh divides by n - 1 and fails in eigh.
            raise ValueError(
                "n_samples=1: the covariance needs at least 2 rows "
                "(svd_solver='full' takes one, as scikit-learn's does)"
            )
        self._check_n_components(n, d, "covariance_eigh")

    # -- the two routes -------------------------------------------------------

    def _fit_pooled(
        self, local: LinearStatistics, lib: Intracomm, local_seconds: float
    ) -> None:
        """Pool the scatter, decompose on rank 0, broadcast. Collective over ``lib``.

        ``local`` is checked already (finite, no target columns) on every rank.
        """
        tic = time.perf_counter()
        stats = allreduce_statistics(local, lib)
        communicate = time.perf_counter() - tic
        require_rows(stats.count, lib.Get_size())
        n, d = stats.count, stats.n_features
        self._check_covariance_rows(n, d)
        tic = time.perf_counter()
        spectrum = spectrum_on_root(
            lambda: spectrum_from_scatter(stats.scatter, n),
            d,
            d,
            lib,
            "decomposing the covariance",
        )
        self._set_fitted(spectrum, stats.mean, n, d, "covariance_eigh")
        self.timings_ = {
            "local_compute": local_seconds,
            "communicate": communicate,
            "solve": time.perf_counter() - tic,
        }

    def _fit_tsqr(self, X: np.ndarray, n: int, first_row: int, lib: Intracomm) -> None:
        """Tall-skinny QR of the centred rows, SVD of the final R. Collective over ``lib``.

        ``n``: the rows of all ranks, as the fit's preamble agreed them;
        ``first_row``: the global number of this rank's first row.
        """
        d = X.shape[1]
        tic = time.perf_counter()
        # The global mean first: every rank centres by the same vector. The
        # count of non-finite rows travels with it: the ranks holding one name
        # it, and an overflowing sum of finite rows is told apart.
        bad = ~np.isfinite(X).all(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            local_sum = X.sum(axis=0, dtype=np.float64)
        sums = allreduce_sum(np.append(local_sum, float(bad.sum())), lib)
        mean, n_bad = sums[:-1] / n, sums[-1]
        communicate = time.perf_counter() - tic
        self._check_n_components(n, d, "full")
        tic = time.perf_counter()
        r_local = None
        with collective_check(lib, "factoring the centred rows (QR)"):
            if bad.any():
                raise ValueError(
                    f"Input X contains NaN or infinity in {int(bad.sum())} row(s), "
                    f"the first at row {first_row + int(np.argmax(bad))}"
                )
            if n_bad == 0:  # else the ranks holding them raise, and this one waits
                if not np.isfinite(mean).all():
                    raise ValueError(
                        "values too large: the column sums overflow float64"
                    )
                r_local = centred_r_factor(X, mean)
        local_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        stacked = gatherv_rows(r_local, lib, what="gathering the R factors")
        communicate += time.perf_counter() - tic
        tic = time.perf_counter()
        spectrum = spectrum_on_root(
            lambda: spectrum_from_r(_r_factor(stacked), n),
            min(n, d),
            d,
            lib,
            "the SVD of the stacked R factors",
        )
        self._set_fitted(spectrum, mean, n, d, "full")
        self.solver_ = "tsqr"
        self.timings_ = {
            "local_compute": local_seconds,
            "communicate": communicate,
            "solve": time.perf_counter() - tic,
        }

    # -- scikit-learn's post-processing ---------------------------------------

    def _check_n_components(self, n_samples: int, n_features: int, solver: str) -> None:
        """scikit-learn's checks of ``n_components`` against the data. Pure."""
        if self.n_components == "mle":
            if n_samples < n_features:
                raise ValueError(
                    "n_components='mle' is only supported if n_samples >= n_features"
                )
        elif self.n_components is not None and not (
            0 <= self.n_components <= min(n_samples, n_features)
        ):
            raise ValueError(
                f"n_components={self.n_components} must be between 0 and "
                f"min(n_samples, n_features)={min(n_samples, n_features)} with "
                f"svd_solver={solver!r}"
            )

    def _set_fitted(
        self,
        spectrum: PCASpectrum,
        mean: np.ndarray,
        n_samples: int,
        n_features: int,
        solver: str,
    ) -> None:
        """Fitted attributes from the spectrum, by scikit-learn's rules. Local and deterministic."""
        _, components = svd_flip(
            None, spectrum.components.copy(), u_based_decision=False
        )
        variance = spectrum.explained_variance
        ratio = variance / variance.sum()
        requested = (
            min(n_samples, n_features)
            if self.n_components is None
            else self.n_components
        )
        kept = _n_components_kept(requested, ratio, variance, n_samples)
        noise = (
            float(np.mean(variance[kept:]))
            if kept < min(n_features, n_samples)
            else 0.0
        )
        model = self._unfitted_estimator()
        model.n_features_in_ = n_features
        if hasattr(self, "feature_names_in_"):
            model.feature_names_in_ = self.feature_names_in_
        model._fit_svd_solver = solver
        model.mean_ = np.asarray(mean, dtype=np.float64).copy()
        model.n_samples_ = n_samples
        model.n_components_ = kept
        model.components_ = np.ascontiguousarray(components[:kept])
        model.explained_variance_ = variance[:kept].copy()
        model.explained_variance_ratio_ = ratio[:kept].copy()
        model.singular_values_ = spectrum.singular_values[:kept].copy()
        model.noise_variance_ = noise
        self.estimator_ = model
        self.solver_ = solver
        for name in (
            "components_",
            "explained_variance_",
            "explained_variance_ratio_",
            "singular_values_",
            "mean_",
            "n_components_",
            "n_samples_",
            "noise_variance_",
            "n_features_in_",
        ):
            setattr(self, name, getattr(model, name))

    def get_covariance(self) -> np.ndarray:
        """Covariance of the data under the fitted model (scikit-learn's). Local."""
        return self.estimator_.get_covariance()

    def get_precision(self) -> np.ndarray:
        """Precision matrix under the fitted model (scikit-learn's). Local."""
        return self.estimator_.get_precision()
