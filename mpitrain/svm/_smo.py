"""libsvm's dual problems solved from a warm start. Pure.

Each pass of the cascade refits the union of support vectors (and, in
feedback passes, the rows that violate the last model) on rank 0.  libsvm
starts every fit from α = 0, so a pass that adds a handful of rows to a
solved problem costs a full fit.  Here the same problems (``C``-SVC's
one-vs-one pairs, ε-SVR) start from the dual coefficients each row already
has: the support vectors of the fits below keep theirs and new rows start
at zero.  The union of feasible solutions of disjoint sets is feasible
(each satisfies ``Σ yα = 0``, and each row's bound ``C·w·class_weight``
is the same in every fit), so the solver only has to move from there.

The solver is libsvm's (:mod:`mpitrain.svm._smo_kernels`) with the same
stopping rule (the maximal violating pair's gap below ``tol``), so it
stops at libsvm's optimum up to ``tol``.  The warm start's gradient
``G = p + Qα`` needs the kernel rows of every row with ``α ≠ 0``: they are
computed in blocks by BLAS (the step that uses all the cores it is given)
and kept in the kernel cache, where the solver finds them.

Every function here is pure (no MPI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "KernelSpec",
    "kernel_block",
    "kernel_matrix",
    "solve_dual",
    "svc_duals",
    "svr_duals",
    "load_solver",
    "KernelStore",
    "dual_column",
    "find_ids",
    "block_entries",
    "KERNELS",
]

_KERNEL_CODES = {"linear": 0, "poly": 1, "rbf": 2, "sigmoid": 3}
#: libsvm's kernels that :func:`kernel_block` computes (not "precomputed" or a callable).
KERNELS = frozenset(_KERNEL_CODES)
# Kernel entries per block of float64 kernel values: 128 MB.
_BLOCK_ENTRIES = 1 << 24
#: Below this many features a block holds ``_NARROW_BLOCK_ENTRIES`` (8 MB, within
#: the L3 cache): there the element-wise steps of a kernel block cost more than
#: its product, and each of them reads the block again.  Measured on one thread
#: (RBF): the 20,000-row kernel matrix at 20 features in 1.19 s against 1.95 s,
#: and decision values of 20,000 rows × 11,400 support vectors in 0.82 against
#: 1.24 s; at 784 features the larger blocks were 8–10 % faster.
_NARROW_FEATURES = 128
_NARROW_BLOCK_ENTRIES = 1 << 20


def block_entries(n_features: int) -> int:
    """Kernel entries per float64 block at this width (see ``_NARROW_FEATURES``). Pure."""
    return _NARROW_BLOCK_ENTRIES if n_features < _NARROW_FEATURES else _BLOCK_ENTRIES


@dataclass(frozen=True)
class KernelSpec:
    """libsvm's kernel: ``kernel`` name and its numeric ``gamma``, ``coef0``, ``degree``."""

    kernel: str
    gamma: float
    coef0: float = 0.0
    degree: int = 3

    @property
    def code(self) -> int:
        return _KERNEL_CODES[self.kernel]


def dual_column(own: int, other: int) -> int:
    """Where a support vector of class ``own`` keeps its coefficient against class ``other``. Pure.

    libsvm's ``dual_coef_`` layout: row ``other − 1`` if ``other > own``,
    else row ``other``.
    """
    return other - 1 if other > own else other


def find_ids(stored: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ``ids`` (distinct, non-negative) are in ``stored``, and at which positions. Pure.

    ``stored`` is unsorted; its negative entries (free places) match nothing.

    Returns ``(found, at)``: ``stored[at[k]] == ids[k]`` where ``found[k]``.
    """
    if len(stored) == 0:
        return np.zeros(len(ids), dtype=bool), np.zeros(len(ids), dtype=np.intp)
    order = np.argsort(stored)
    at = order[np.minimum(np.searchsorted(stored, ids, sorter=order), len(stored) - 1)]
    return stored[at] == ids, at


def load_solver():
    """The compiled solver module (numba's import and cached code on first use). Local.

    Raises ImportError when numba is missing; numba's own errors when it
    cannot compile or cache.
    """
    from mpitrain.svm import _smo_kernels

    return _smo_kernels


def kernel_block(
    spec: KernelSpec,
    A: np.ndarray,
    B: np.ndarray,
    sq_a: np.ndarray | None = None,
    sq_b: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``K(A, B)`` with libsvm's formulas, one matrix product (BLAS). Pure.

    ``out`` (float64, C-contiguous, ``len(A) × len(B)``) receives it, so a
    caller can fill memory it already holds.
    """
    K = np.matmul(A, B.T, out=out)
    if spec.kernel == "linear":
        return K
    if spec.kernel == "rbf":
        sq_a = np.einsum("ij,ij->i", A, A) if sq_a is None else sq_a
        sq_b = np.einsum("ij,ij->i", B, B) if sq_b is None else sq_b
        # exp(−γ(‖a‖² + ‖b‖² − 2a·b)), as libsvm computes it, in place.
        K *= -2.0
        K += sq_a[:, None]
        K += sq_b[None, :]
        K *= -spec.gamma
        return np.exp(K, out=K)
    K *= spec.gamma
    K += spec.coef0
    if spec.kernel == "poly":
        return np.power(K, spec.degree, out=K)
    return np.tanh(K, out=K)


def _kernel_diagonal(spec: KernelSpec, sq: np.ndarray) -> np.ndarray:
    if spec.kernel == "linear":
        return sq.copy()
    if spec.kernel == "rbf":
        return np.ones_like(sq)
    if spec.kernel == "poly":
        return (spec.gamma * sq + spec.coef0) ** spec.degree
    return np.tanh(spec.gamma * sq + spec.coef0)


def kernel_matrix(spec: KernelSpec, X: np.ndarray) -> np.ndarray:
    """``K(X, X)`` in float32, as libsvm caches it, computed in blocks by BLAS. Pure."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = len(X)
    out = np.empty((n, n), dtype=np.float32)
    _fill_kernel_rows(out, spec, X, np.einsum("ij,ij->i", X, X), np.arange(n))
    return out


def _fill_kernel_rows(
    K: np.ndarray,
    spec: KernelSpec,
    X: np.ndarray,
    sq: np.ndarray,
    rows: np.ndarray,
    threads: int = 1,
) -> None:
    """``K[rows] = K(X[rows], X)`` (stored in ``K``'s dtype), blocks of rows on ``threads`` threads. Pure.

    The threads' float64 blocks together hold at most
    :func:`block_entries` entries, however many cores a node has.
    """
    entries = block_entries(X.shape[1])
    step = max(1, entries // (max(len(X), 1) * max(threads, 1)))

    def compute(part: np.ndarray) -> None:
        K[part] = kernel_block(spec, X[part], X, sq[part], sq)

    _thread_map(
        compute, [rows[a : a + step] for a in range(0, len(rows), step)], threads
    )


def _warm_start(X, sq, spec, row, alpha, C, beta, bound, cache_bytes, full):
    """The kernel-row cache for a warm start, ``Kβ`` and ``K·bound``. Pure.

    With ``full`` (the whole kernel matrix) it is the cache.  Otherwise the
    kernel rows of the start's support are computed in blocks for the two
    products and fill a cache of ``cache_bytes``, the free rows' first (the
    solver moves those most).
    """
    n_rows = X.shape[0]
    if full is not None:
        cache = full
        slot_of = np.arange(n_rows, dtype=np.int64)
        slot_row = np.arange(n_rows, dtype=np.int64)
        needed = np.flatnonzero((beta != 0) | (bound != 0))
    else:
        slots = int(min(n_rows, max(2, cache_bytes // (4 * max(n_rows, 1)))))
        cache = np.empty((slots, n_rows), dtype=np.float32)
        slot_of = np.full(n_rows, -1, dtype=np.int64)
        slot_row = np.full(slots, -1, dtype=np.int64)
        active = np.zeros(n_rows, dtype=bool)
        active[row[alpha > 0]] = True
        free = np.zeros(n_rows, dtype=bool)
        free[row[(alpha > 0) & (alpha < C)]] = True
        needed = np.concatenate(
            [np.flatnonzero(active & free), np.flatnonzero(active & ~free)]
        )
    last_used = np.zeros(len(cache), dtype=np.int64)
    k_beta = np.zeros(n_rows)
    k_bound = np.zeros(n_rows)
    step = max(1, block_entries(X.shape[1]) // max(n_rows, 1))
    filled = 0
    for start in range(0, len(needed), step):
        rows = needed[start : start + step]
        if full is not None:
            block = full[rows].astype(np.float64)
        else:
            block = kernel_block(spec, X[rows], X, sq[rows], sq)
            keep = min(len(rows), len(cache) - filled)
            if keep > 0:
                cache[filled : filled + keep] = block[:keep]
                slot_row[filled : filled + keep] = rows[:keep]
                slot_of[rows[:keep]] = np.arange(filled, filled + keep)
                filled += keep
        k_beta += beta[rows] @ block
        k_bound += bound[rows] @ block
    return (cache, slot_of, slot_row, last_used), k_beta, k_bound


def solve_dual(
    X: np.ndarray,
    spec: KernelSpec,
    row: np.ndarray,
    sign: np.ndarray,
    p: np.ndarray,
    C: np.ndarray,
    alpha0: np.ndarray | None,
    *,
    tol: float,
    max_iter: int,
    cache_bytes: float,
    full: np.ndarray | None = None,
    shrinking: bool = True,
) -> tuple[np.ndarray, float, int, bool, float]:
    """libsvm's problem ``min ½αᵀQα + pᵀα, 0 ≤ α ≤ C, signᵀα = signᵀα₀`` from ``α₀``. Pure.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float64
    spec : KernelSpec
    row, sign : ndarray of shape (n_vars,)
        Variable ``t`` is row ``row[t]`` of ``X`` with label ``sign[t]`` (±1);
        ``Q[t, u] = sign[t]·sign[u]·K(x_row[t], x_row[u])``.  ε-SVR has two
        variables per row.
    p, C : ndarray of shape (n_vars,)
        The linear term and each variable's upper bound (positive).
    alpha0 : ndarray of shape (n_vars,) or None
        A feasible start (clipped to ``[0, C]``); None is libsvm's zero.
    tol : float
        libsvm's ``eps``: stop when the maximal violating pair's gap is below it.
    max_iter : int
        Iteration limit; ``-1`` is libsvm's own (``max(10⁷, 100·n_vars)``).
    cache_bytes : float
        Size of the float32 kernel-row cache (at least two rows are kept).
    full : ndarray of shape (n_rows, n_rows), float32, optional
        ``K(X, X)`` already computed (see :func:`kernel_matrix`); then it is
        the cache and no kernel row is computed again.
    shrinking : bool, default=True
        libsvm's shrinking heuristic (scikit-learn's ``shrinking``).

    Returns
    -------
    alpha : ndarray of shape (n_vars,)
    rho : float
        libsvm's ρ: the decision value is ``Σ sign·α·K − ρ``.
    n_iter : int
    converged : bool
        False when the iteration limit stopped it.
    objective : float
        The dual objective at ``alpha``.
    """
    kernels = load_solver()
    X = np.ascontiguousarray(X, dtype=np.float64)
    row = np.ascontiguousarray(row, dtype=np.int64)
    sign = np.ascontiguousarray(sign, dtype=np.float64)
    C = np.ascontiguousarray(C, dtype=np.float64)
    n_rows = X.shape[0]
    alpha = (
        np.zeros(len(row))
        if alpha0 is None
        else np.clip(np.asarray(alpha0, dtype=np.float64), 0.0, C)
    )
    sq = np.einsum("ij,ij->i", X, X)
    kdiag = _kernel_diagonal(spec, sq)
    beta = np.zeros(n_rows)
    np.add.at(beta, row, sign * alpha)
    # The variables at their upper bound, for shrinking's G_bar = Σ C_u Q[:, u].
    bound = np.zeros(n_rows)
    at_bound = alpha >= C
    np.add.at(bound, row[at_bound], (sign * C)[at_bound])
    rows_cache, k_beta, k_bound = _warm_start(
        X, sq, spec, row, alpha, C, beta, bound, cache_bytes, full
    )
    p = np.ascontiguousarray(p, dtype=np.float64)
    G = p + sign * k_beta[row]
    G_bar = sign * k_bound[row]

    limit = max(10_000_000, 100 * len(row)) if max_iter < 0 else int(max_iter)
    n_iter, status = kernels.solve(
        (X, sq, spec.code, float(spec.gamma), float(spec.coef0), float(spec.degree)),
        rows_cache,
        (row, sign, C),
        p,
        kdiag,
        alpha,
        G,
        G_bar,
        float(tol),
        limit,
        bool(shrinking),
    )
    # libsvm's objective ½αᵀQα + pᵀα = ½ Σ α (G + p), from the final gradient.
    objective = 0.5 * float(alpha @ (G + p))
    return (
        alpha,
        float(kernels.rho(sign, C, alpha, G)),
        int(n_iter),
        status == 0,
        objective,
    )


def svc_duals(
    X: np.ndarray,
    label: np.ndarray,
    bounds: np.ndarray,
    n_classes: int,
    spec: KernelSpec,
    warm: np.ndarray | None,
    *,
    tol: float,
    max_iter: int,
    cache_bytes: float,
    full: np.ndarray | None = None,
    threads: int = 1,
    shrinking: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, float]:
    """libsvm's one-vs-one C-SVC duals, each pair started from ``warm``. Pure.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    label : ndarray of int, shape (n_rows,)
        Each row's class index.
    bounds : ndarray of shape (n_rows,)
        Each row's ``C · class_weight[label] · sample_weight``; rows with 0
        take no part.
    n_classes : int
    warm : ndarray of shape (n_rows, n_classes − 1) or None
        Each row's signed coefficients in libsvm's layout (the transpose of
        libsvm's ``_dual_coef_`` columns): a row of class ``c`` has its
        coefficient for the pair with class ``k`` in column
        :func:`dual_column` ``(c, k)``; positive for the pair's first class.
    tol, max_iter, cache_bytes, shrinking :
        As in :func:`solve_dual`.
    full : ndarray of shape (n_rows, n_rows), float32, optional
        ``K(X, X)`` (e.g. from a :class:`KernelStore`); computed here when
        it fits in ``cache_bytes``, else each pair caches kernel rows.
    threads : int, default=1
        Pairs solved at once, each on a thread of its own (the row caches
        share ``cache_bytes``).  The result does not depend on it.

    Returns
    -------
    duals : ndarray of shape (n_rows, n_classes − 1)
        The solution in ``warm``'s layout.
    intercept : ndarray of shape (n_pairs,)
        libsvm's ``_intercept_`` (−ρ) per pair ``(0,1), (0,2), …, (1,2), …``.
    n_iter : ndarray of int, shape (n_pairs,)
    converged : bool
    objective : float
        libsvm's dual objective ``½αᵀQα − Σα``, summed over the pairs.
    """
    label = np.asarray(label, dtype=np.intp)
    duals = np.zeros((len(X), n_classes - 1))
    n_pairs = n_classes * (n_classes - 1) // 2
    intercept = np.zeros(n_pairs)
    n_iter = np.zeros(n_pairs, dtype=np.int32)
    converged = True
    objective = 0.0
    # One kernel matrix serves every pair when it fits in the cache: one BLAS
    # product instead of a matrix-vector product per row and pair.
    position = np.arange(len(X))
    if full is None:
        usable = np.flatnonzero(np.asarray(bounds) > 0)
        if 4.0 * len(usable) ** 2 <= cache_bytes:
            full = kernel_matrix(spec, X[usable])
            position = np.full(len(X), -1)
            position[usable] = np.arange(len(usable))
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]

    def solve_pair(pair: int):
        i, j = pairs[pair]
        first = np.flatnonzero((label == i) & (bounds > 0))
        second = np.flatnonzero((label == j) & (bounds > 0))
        # libsvm's order inside a pair: the first class's rows, then the second's.
        rows = np.concatenate([first, second])
        sign = np.concatenate([np.ones(len(first)), -np.ones(len(second))])
        alpha0 = None
        if warm is not None:
            alpha0 = np.abs(
                np.concatenate(
                    [warm[first, dual_column(i, j)], warm[second, dual_column(j, i)]]
                )
            )
        pair_matrix = None
        if full is not None:
            pair_matrix = _submatrix(full, position[rows])
        solution = solve_dual(
            X[rows],
            spec,
            np.arange(len(rows)),
            sign,
            -np.ones(len(rows)),
            bounds[rows],
            alpha0,
            tol=tol,
            max_iter=max_iter,
            cache_bytes=cache_bytes / max(threads, 1),
            full=pair_matrix,
            shrinking=shrinking,
        )
        return first, second, solution

    def record(pair: int, result) -> None:
        nonlocal converged, objective
        i, j = pairs[pair]
        first, second, (alpha, rho, iterations, done, value) = result
        duals[first, dual_column(i, j)] = alpha[: len(first)]
        duals[second, dual_column(j, i)] = -alpha[len(first) :]
        intercept[pair] = -rho
        n_iter[pair] = iterations
        converged &= done
        objective += value

    # The pairs are independent problems and the solver releases the GIL.
    for pair, result in enumerate(_thread_map(solve_pair, range(len(pairs)), threads)):
        record(pair, result)
    return duals, intercept, n_iter, converged, objective


def svr_duals(
    X: np.ndarray,
    y: np.ndarray,
    bounds: np.ndarray,
    epsilon: float,
    spec: KernelSpec,
    warm: np.ndarray | None,
    *,
    tol: float,
    max_iter: int,
    cache_bytes: float,
    full: np.ndarray | None = None,
    shrinking: bool = True,
) -> tuple[np.ndarray, float, int, bool, float]:
    """libsvm's ε-SVR dual ``β = α − α*``, started from ``warm`` (β per row). Pure.

    libsvm's two variables per row: ``α`` with label +1 and linear term
    ``ε − y``, ``α*`` with label −1 and ``ε + y``, both bounded by the row's
    ``C · sample_weight`` (``bounds``; rows with 0 take no part).  The warm
    start is ``α = max(β, 0)``, ``α* = max(−β, 0)``.  ``full`` as in
    :func:`svc_duals`.

    Returns ``(beta of shape (n_rows,), libsvm's intercept −ρ, n_iter,
    converged, objective)``; the objective is libsvm's over its two
    variables per row, ``½βᵀKβ + ε Σ|β| − yᵀβ`` when no row has both.
    """
    rows = np.flatnonzero(bounds > 0)
    n = len(rows)
    y_rows = np.asarray(y, dtype=np.float64)[rows]
    alpha0 = None
    if warm is not None:
        start = np.asarray(warm, dtype=np.float64)[rows]
        alpha0 = np.concatenate([np.maximum(start, 0.0), np.maximum(-start, 0.0)])
    alpha, rho, iterations, done, objective = solve_dual(
        X[rows],
        spec,
        np.concatenate([np.arange(n), np.arange(n)]),
        np.concatenate([np.ones(n), -np.ones(n)]),
        np.concatenate([epsilon - y_rows, epsilon + y_rows]),
        np.tile(np.asarray(bounds, dtype=np.float64)[rows], 2),
        alpha0,
        tol=tol,
        max_iter=max_iter,
        cache_bytes=cache_bytes,
        full=(
            _submatrix(full, rows)
            if full is not None
            else kernel_matrix(spec, X[rows])
            if 4.0 * n * n <= cache_bytes
            else None
        ),
        shrinking=shrinking,
    )
    beta = np.zeros(len(X))
    beta[rows] = alpha[:n] - alpha[n:]
    return beta, -rho, iterations, done, objective


def _submatrix(full: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``full[at][:, at]``: ``full`` itself when ``at`` takes every row in order. Pure.

    A two-class fit of rows grouped by class, or an SVR fit, uses the whole
    matrix: no copy of it (gigabytes for a large union).
    """
    if len(at) == len(full) and np.array_equal(at, np.arange(len(full))):
        return full
    return full[np.ix_(at, at)]


def _thread_map(work, items, threads: int) -> list:
    """``[work(item) for item in items]``, on up to ``threads`` threads with BLAS on one core each. Local.

    Gains where ``work`` releases the GIL (numpy, BLAS, the compiled solver
    and copies).  A task's exception is raised here.
    """
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(work, items))


class KernelStore:
    """The kernel matrix of the rows a rank refits, kept from one refit to the next. Local.

    A cascade's leader refits a union that mostly holds rows it refitted
    before: its own support vectors in the next layer, the global support
    vectors in every feedback pass.  Their kernel entries are kept (by row
    id, in float32, as libsvm's cache keeps them), so a refit computes only
    the new rows' entries, ``K(new, union)``, in one BLAS product.  The
    matrix is kept only while it fits in ``budget_bytes``; rows that left
    the union are dropped.  Assembling the next matrix holds the old one
    too: up to twice the budget for a moment.
    """

    def __init__(self, spec: KernelSpec, budget_bytes: float):
        self.spec = spec
        self.budget_bytes = float(budget_bytes)
        self._ids = np.empty(0, dtype=np.int64)
        self._K: np.ndarray | None = None
        #: Kernel entries computed and reused over the store's life.
        self.entries_computed = 0
        self.entries_reused = 0

    def fits(self, n_rows: int) -> bool:
        """Whether the kernel matrix of ``n_rows`` rows fits in the budget. Pure."""
        return 4.0 * n_rows * n_rows <= self.budget_bytes

    def matrix(
        self, ids: np.ndarray, X: np.ndarray, threads: int = 1
    ) -> np.ndarray | None:
        """``K(X, X)`` for the rows with these (distinct) ids, or None if it does not fit. Local.

        ``threads``: threads that copy the kept entries and compute the new
        rows (numpy and the compiled copies release the GIL; BLAS runs on one
        thread in each).  The result does not depend on it.
        """
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        if not self.fits(n):
            self._ids, self._K = np.empty(0, dtype=np.int64), None
            return None
        kernels = load_solver()
        found, old_at = find_ids(self._ids, ids)
        K = np.empty((n, n), dtype=np.float32)
        kept = np.flatnonzero(found)
        new = np.flatnonzero(~found)
        # Ranges of kept rows, a few per thread.
        per = max(16, -(-len(kept) // (4 * max(threads, 1))))
        ranges = [(a, min(a + per, len(kept))) for a in range(0, len(kept), per)]
        # Kept entries, copied row by row from the last matrix.
        kept_old = old_at[kept]
        _thread_map(
            lambda r: kernels.gather_square(K, self._K, kept, kept_old, *r),
            ranges,
            threads,
        )
        if len(new):
            X = np.ascontiguousarray(X, dtype=np.float64)
            sq = np.einsum("ij,ij->i", X, X)
            _fill_kernel_rows(K, self.spec, X, sq, new, threads)
            if len(kept):
                # The kept rows' entries against the new rows: the new rows' transposed.
                _thread_map(
                    lambda r: kernels.mirror_rows(K, new, kept, *r), ranges, threads
                )
        self.entries_reused += len(kept) ** 2
        self.entries_computed += n * n - len(kept) ** 2
        self._ids, self._K = ids.copy(), K
        return K
