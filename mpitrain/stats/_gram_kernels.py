"""Compiled kernels of :mod:`mpitrain.stats._gram` (numba). Imported on first use.

Kept in a module of their own so that importing :mod:`mpitrain.stats`
does not import numba (about 0.3 s) for models that never form a Gram
matrix, and so that numba caches the compiled code beside this file (or,
where that is read-only, in the user's cache directory).
"""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets LLVM vectorise the sums over rows and contraction lets
# it use FMA; no flag that assumes away NaN or infinity (they must reach the
# diagonal, where the caller looks for them).
_FLAGS = {"reassoc", "contract"}
_JIT = {"nogil": True, "cache": True, "fastmath": _FLAGS, "boundscheck": False}

#: Rows and columns of one output tile: 4 × 4 sums of 8-wide vectors keep
#: 16 accumulators in registers (measured faster than 4 × 8 and 8 × 4).
TILE = 4


@numba.njit(**_JIT)
def _tiles(zt, gram, m):  # pragma: no cover - compiled
    # gram[i:i+4, j:j+4] += zt[i:i+4, :m] @ zt[j:j+4, :m].T for tiles on or
    # above the diagonal; each feature's values are contiguous, so the sum
    # over rows is a vectorised dot product of 8 rows at a time.
    p = zt.shape[0]
    for i in range(0, p, TILE):
        a0, a1, a2, a3 = zt[i], zt[i + 1], zt[i + 2], zt[i + 3]
        for j in range(i, p, TILE):
            b0, b1, b2, b3 = zt[j], zt[j + 1], zt[j + 2], zt[j + 3]
            c00 = c01 = c02 = c03 = 0.0
            c10 = c11 = c12 = c13 = 0.0
            c20 = c21 = c22 = c23 = 0.0
            c30 = c31 = c32 = c33 = 0.0
            for k in range(m):
                x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
                y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
                c00 += x0 * y0
                c01 += x0 * y1
                c02 += x0 * y2
                c03 += x0 * y3
                c10 += x1 * y0
                c11 += x1 * y1
                c12 += x1 * y2
                c13 += x1 * y3
                c20 += x2 * y0
                c21 += x2 * y1
                c22 += x2 * y2
                c23 += x2 * y3
                c30 += x3 * y0
                c31 += x3 * y1
                c32 += x3 * y2
                c33 += x3 * y3
            gram[i, j] += c00
            gram[i, j + 1] += c01
            gram[i, j + 2] += c02
            gram[i, j + 3] += c03
            gram[i + 1, j] += c10
            gram[i + 1, j + 1] += c11
            gram[i + 1, j + 2] += c12
            gram[i + 1, j + 3] += c13
            gram[i + 2, j] += c20
            gram[i + 2, j + 1] += c21
            gram[i + 2, j + 2] += c22
            gram[i + 2, j + 3] += c23
            gram[i + 3, j] += c30
            gram[i + 3, j + 1] += c31
            gram[i + 3, j + 2] += c32
            gram[i + 3, j + 3] += c33


@numba.njit(**_JIT)
def shifted_gram(x, y, weight, shift, zt, gram, rows):  # pragma: no cover - compiled
    """Add the upper tiles of ``zᵀz``, ``z = [x - s, y - s, 1] · sqrt(w)``, to ``gram``.

    ``zt`` is the work buffer (padded columns × at least ``rows``, the rows
    per chunk), its padding rows zero; ``weight`` is empty when the rows
    are unweighted.
    """
    n, d = x.shape
    t = y.shape[1]
    weighted = weight.shape[0] > 0
    for start in range(0, n, rows):
        m = min(rows, n - start)
        # Copy, shift, weight and transpose in one pass over the chunk's rows.
        for r in range(m):
            k = start + r
            s = np.sqrt(weight[k]) if weighted else 1.0
            for i in range(d):
                zt[i, r] = (x[k, i] - shift[i]) * s
            for i in range(t):
                zt[d + i, r] = (y[k, i] - shift[d + i]) * s
            zt[d + t, r] = s
        _tiles(zt, gram, m)
