"""``zᵀz`` of shifted rows at narrow widths, near the machine's peak. Local.

BLAS ``syrk`` reaches about 55–65 % of the ``dgemm`` peak when the product
is narrow (100 columns) and the rows many: it packs both operands for
every block of rows, which costs as much as the arithmetic at that width
(docs/performance.md, ``scripts/bench_blas.py``).  The compiled kernel of
:mod:`mpitrain.stats._gram_kernels` instead copies each chunk of rows once,
shifted, weighted and transposed, into a buffer that stays in the core's
L2 cache, and sums 4 × 4 tiles of the upper triangle with vectorised dot
products over the rows.  Wider products go to BLAS, which is efficient
there.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["GramKernel", "MAX_KERNEL_COLUMNS"]

#: Above this many columns ``syrk`` is efficient and the tiles' share of
#: diagonal waste and loop overhead grows: BLAS takes over (measured).
MAX_KERNEL_COLUMNS = 256
# The transposed chunk fits in a core's L2 cache (1 MB on the machines measured)
# with room for the tiles' rows.
_CHUNK_BYTES = 768 << 10
_MIN_ROWS = 64
# Below this many rows per thread a second thread costs more than it gives.
_ROWS_PER_THREAD = 8192


def _padded(p: int) -> int:
    from mpitrain.stats._gram_kernels import TILE

    return -(-p // TILE) * TILE


class GramKernel:
    """The Gram matrix of ``z = [x - s, y - s, 1] · sqrt(w)`` for blocks of rows. Local.

    Parameters
    ----------
    n_columns : int
        Columns of ``z`` (features + targets + 1); at most
        :data:`MAX_KERNEL_COLUMNS`.
    threads : int, default=1
        Threads to split a block's rows over (the rank's share of its
        node's cores); each has its own buffer and partial sum.
    """

    def __init__(self, n_columns: int, threads: int = 1):
        # Compiled (or loaded from numba's cache) here, once per process.
        from mpitrain.stats import _gram_kernels

        if n_columns > MAX_KERNEL_COLUMNS:
            raise ValueError(
                f"{n_columns} columns: the kernel is for at most {MAX_KERNEL_COLUMNS}"
            )
        self._kernel = _gram_kernels.shifted_gram
        self.n_columns = n_columns
        self.threads = max(1, int(threads))
        self._padded = _padded(n_columns)
        self._rows = max(_MIN_ROWS, _CHUNK_BYTES // (8 * self._padded)) // 8 * 8
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []

    def _buffer(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._buffers) <= index:
            p = self._padded
            # Padding rows stay zero: they add nothing to the tiles they enter.
            self._buffers.append((np.zeros((p, self._rows)), np.zeros((p, p))))
        zt, gram = self._buffers[index]
        gram[...] = 0.0
        return zt, gram

    def gram(
        self,
        x: np.ndarray,
        y: np.ndarray,
        shift: np.ndarray,
        sample_weight: np.ndarray | None = None,
    ) -> np.ndarray:
        """``zᵀz`` (full, symmetric) of the rows ``x`` (n, d) with targets ``y`` (n, t). Local.

        ``shift`` holds d + t values; ``d + t + 1`` must be ``n_columns``.
        NaN or infinity in a row reaches the diagonal, as with BLAS.
        """
        x = np.ascontiguousarray(x)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        shift = np.ascontiguousarray(shift, dtype=np.float64)
        w = (
            np.empty(0)
            if sample_weight is None
            else np.ascontiguousarray(sample_weight, dtype=np.float64)
        )
        n, p = x.shape[0], self.n_columns
        if x.shape[1] + y.shape[1] + 1 != p:
            raise ValueError(
                f"{x.shape[1]} features and {y.shape[1]} targets do not make {p} columns"
            )
        parts = min(self.threads, max(1, n // _ROWS_PER_THREAD))
        bounds = [n * i // parts for i in range(parts + 1)]
        sums = [self._buffer(i) for i in range(parts)]

        failed: list[BaseException] = []

        def run(i: int) -> None:
            a, b = bounds[i], bounds[i + 1]
            zt, gram = sums[i]
            try:
                self._kernel(x[a:b], y[a:b], w[a:b] if w.size else w, shift, zt, gram)
            except (
                BaseException
            ) as exc:  # re-raised below: a lost part would be a wrong sum
                failed.append(exc)

        if parts == 1:
            run(0)
        else:
            # The kernel releases the GIL: each thread sums its own rows.
            workers = [threading.Thread(target=run, args=(i,)) for i in range(1, parts)]
            for worker in workers:
                worker.start()
            run(0)
            for worker in workers:
                worker.join()
        if failed:
            raise failed[0]
        upper = sums[0][1][:p, :p].copy()
        for _, partial in sums[1:]:
            upper += partial[:p, :p]
        # Tiles on the diagonal hold their lower halves too: keep the upper, mirror it.
        upper = np.triu(upper)
        return upper + np.triu(upper, 1).T
