"""``zᵀz`` of shifted rows at narrow widths, near the machine's peak. Local.

BLAS ``syrk`` reaches about 55–65 % of the ``dgemm`` peak when the product
is narrow (100 columns) and the rows many: it packs both operands for
every block of rows, which costs as much as the arithmetic at that width
(docs/performance.md, ``scripts/bench_blas.py``).  The compiled kernel of
:mod:`mpitrain.stats._gram_kernels` instead copies each chunk of rows once,
shifted, weighted and transposed, into a buffer that stays in the core's
L2 cache, and sums 4 × 4 (or 4 × 2) tiles of the upper triangle with
vectorised dot products over the rows; while the tiles run, the next chunk's rows are
fetched into the cache, so the copy does not wait for memory.  Wider
products go to BLAS, which is efficient there.
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = [
    "GramKernel",
    "KERNEL_MIN_WORK",
    "kernel_pays",
    "MAX_KERNEL_COLUMNS",
    "kernel_choice",
    "load_in_background",
]

#: Above this many columns BLAS takes over: ``syrk`` gains with the width
#: (at 202 columns the kernel still led, 32.1 against 27.3 GFLOP/s on one
#: thread), and wider tiles were not measured.
MAX_KERNEL_COLUMNS = 256
#: ``rows · columns²`` from which the kernel repays its fixed cost on one
#: thread: about 0.03 s in a fresh process to import llvmlite and load the
#: cached object code.  Measured (bench-results/bench_blas_llvm_50.json,
#: bench_blas_llvm_100.json): against the accumulator's BLAS path it breaks
#: even at 7.9e8 at 52 columns and 1.1e9 at 102; against PCA's ``syrk`` of
#: the rows as they lie (0.127 s against 0.072 s at 1,000,000 x 50), at
#: 1.4e9.  The first process on a new CPU model or LLVM release compiles it
#: instead (0.15-0.35 s), once.  (With numba's import and cached code,
#: 0.33 s, the threshold was 1.5e10.)
KERNEL_MIN_WORK = 15 * 10**8
# Rows per chunk: the transposed chunk and the next chunk's rows, fetched
# while the tiles run, both stay in a core's L2 cache (1–2 MB on the machines
# measured).  About 300 rows was fastest at 52 and at 102 columns, 160 at
# 202 (docs/performance.md); fewer add the tiles' fixed cost per chunk, more
# let the fetched rows push the chunk out of L2.
_CHUNK_ROWS = 320
_CHUNK_BYTES = 256 << 10
_MIN_ROWS = 64
# Below this many rows per thread a second thread costs more than it gives.
_ROWS_PER_THREAD = 8192


_CHOICES = {"auto": None, "always": True, "never": False}


def kernel_pays(rows: int, columns: int, threads: int = 1) -> bool:
    """Whether the kernel repays loading it for ``rows`` rows of ``columns``. Pure.

    With more threads per rank BLAS falls further behind at these widths
    (at 100 columns on 2 threads: 15.9 against 49.6 GFLOP/s, three times
    the single-thread saving), so the work it needs shrinks with them.
    """
    work = rows * columns * columns * max(1, threads)
    return columns <= MAX_KERNEL_COLUMNS and work >= KERNEL_MIN_WORK


def kernel_choice() -> bool | None:
    """``MPITRAIN_GRAM_KERNEL``: ``auto`` (None, the default), ``always`` or ``never``. Local.

    ``never`` is for a node where LLVM cannot compile or load the code;
    ``always`` uses the kernel however few the rows.  Raises ValueError for
    any other value, naming the variable.
    """
    value = os.environ.get("MPITRAIN_GRAM_KERNEL", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"MPITRAIN_GRAM_KERNEL={value!r}: expected one of {', '.join(_CHOICES)}"
        )
    return _CHOICES[value]


def _load() -> None:
    from mpitrain.stats._gram_kernels import load

    load()


def load_in_background() -> threading.Thread:
    """Import llvmlite and load (or compile) the kernel's code on a thread. Local.

    For a rank that will use the kernel, while its first rows are read.  It
    changes only when the cost is paid: a later :class:`GramKernel` waits
    for the same load (one lock guards it), and a failure here is kept and
    reported there.
    """
    from mpitrain.utils.threads import start_ahead

    return start_ahead(_load, "mpitrain-gram-kernel")


def _padded(p: int) -> int:
    from mpitrain.stats._gram_kernels import TILE

    return -(-p // TILE) * TILE


def _zeros_on_lines(shape: tuple[int, int]) -> np.ndarray:
    """Zeros whose data starts on a 64-byte cache line. Pure.

    With a stride of whole lines every row of the transposed chunk then
    starts on a line, and no 8-wide load of the tiles straddles two lines
    (malloc promises 16 bytes; at 100 features, one thread, side by side:
    40.9–42.4 against 36.4–41.2 GFLOP/s).
    """
    size = shape[0] * shape[1]
    flat = np.zeros(size + 8)
    skip = (-flat.ctypes.data % 64) // 8
    return flat[skip : skip + size].reshape(shape)


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
        from mpitrain.stats import _gram_kernels

        if n_columns > MAX_KERNEL_COLUMNS:
            raise ValueError(
                f"{n_columns} columns: the kernel is for at most {MAX_KERNEL_COLUMNS}"
            )
        # Loaded from the cache (or compiled) here, once per process.
        _gram_kernels.load()
        self._kernel = _gram_kernels.shifted_gram
        self.n_columns = n_columns
        self.threads = max(1, int(threads))
        self._padded = _padded(n_columns)
        self._rows = (
            max(_MIN_ROWS, min(_CHUNK_ROWS, _CHUNK_BYTES // (8 * self._padded)))
            // 8
            * 8
        )
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []

    def _buffer(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._buffers) <= index:
            p = self._padded
            # Padding rows stay zero: they add nothing to the tiles they enter.
            # A row stride of an odd number of cache lines puts a tile's eight
            # rows in eight different L1 sets; a multiple of 4 KiB put them all
            # in one (3x slower at 32 columns), of 2 KiB in two (256 rows: 28
            # against 36 GFLOP/s at 50 features).
            lines = -(-self._rows // 8)
            stride = 8 * (lines + 1 - lines % 2)
            self._buffers.append((_zeros_on_lines((p, stride)), np.zeros((p, p))))
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
                self._kernel(
                    x[a:b], y[a:b], w[a:b] if w.size else w, shift, zt, gram, self._rows
                )
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
