"""Compiled kernels of :mod:`mpitrain.stats._gram` (numba). Imported on first use.

Kept in a module of their own so that importing :mod:`mpitrain.stats`
does not import numba (about 0.3 s) for models that never form a Gram
matrix, and so that numba caches the compiled code beside this file (or,
where that is read-only, in the user's cache directory).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# Reassociation lets LLVM vectorise the sums over rows and contraction lets
# it use FMA; no flag that assumes away NaN or infinity (they must reach the
# diagonal, where the caller looks for them).
_FLAGS = {"reassoc", "contract"}
_JIT = {"nogil": True, "cache": True, "fastmath": _FLAGS, "boundscheck": False}

#: Rows and columns of one output tile: 4 × 4 sums of 8-wide vectors keep
#: 16 accumulators in registers (measured faster than 4 × 8 and 8 × 4).
TILE = 4
#: Rows transposed together: each column's four values go to consecutive
#: addresses (measured faster than one row at a time and than 8 or 16 rows).
BLOCK = 4


@intrinsic
def _prefetch(typingctx, array, byte_offset):  # pragma: no cover - compiled
    # A hint to fetch the cache line ``byte_offset`` bytes into ``array``'s
    # data (LLVM's prefetch: read, keep in the outer caches).  It never faults,
    # and it retires at once, where a plain load that misses would hold up the
    # arithmetic behind it.
    sig = types.void(array, byte_offset)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(data, byte), [args[1]])
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        builder.call(prefetch, [address, i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def _tiles(zt, gram, m, ahead, ahead_start, ahead_bytes):  # pragma: no cover - compiled
    # gram[i:i+4, j:j+4] += zt[i:i+4, :m] @ zt[j:j+4, :m].T for tiles on or
    # above the diagonal; each feature's values are contiguous, so the sum
    # over rows is a vectorised dot product of 8 rows at a time.
    #
    # Meanwhile the next chunk's rows (``ahead_bytes`` bytes of ``ahead`` from
    # ``ahead_start``) are fetched into the cache, a few lines per tile: the
    # tiles compute from L2 and leave the memory idle, and the next copy then
    # reads from the cache instead of waiting for memory (the copy alone took
    # a third of the time).
    p = zt.shape[0]
    tiles = (p // TILE) * (p // TILE + 1) // 2
    lines_per_tile = (ahead_bytes // 64 + tiles) // tiles
    line = ahead_start
    ahead_stop = ahead_start + ahead_bytes
    for i in range(0, p, TILE):
        a0, a1, a2, a3 = zt[i], zt[i + 1], zt[i + 2], zt[i + 3]
        for j in range(i, p, TILE):
            for _ in range(lines_per_tile):
                if line < ahead_stop:
                    _prefetch(ahead, line)
                    line += 64
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
def _copy(x, y, weight, shift, zt, start, m, scale):  # pragma: no cover - compiled
    # zt[:, :m] = [x - s, y - s, 1]ᵀ · sqrt(w) of the rows start .. start + m,
    # BLOCK rows at a time so that the stores to each column are consecutive.
    d = x.shape[1]
    t = y.shape[1]
    weighted = weight.shape[0] > 0
    blocked = m - m % BLOCK
    for r0 in range(0, blocked, BLOCK):
        k = start + r0
        for q in range(BLOCK):
            scale[q] = np.sqrt(weight[k + q]) if weighted else 1.0
        if weighted:
            for i in range(d):
                s = shift[i]
                for q in range(BLOCK):
                    zt[i, r0 + q] = (x[k + q, i] - s) * scale[q]
        else:
            for i in range(d):
                s = shift[i]
                for q in range(BLOCK):
                    zt[i, r0 + q] = x[k + q, i] - s
        for i in range(t):
            s = shift[d + i]
            for q in range(BLOCK):
                zt[d + i, r0 + q] = (y[k + q, i] - s) * scale[q]
        for q in range(BLOCK):
            zt[d + t, r0 + q] = scale[q]
    for r in range(blocked, m):
        k = start + r
        s = np.sqrt(weight[k]) if weighted else 1.0
        for i in range(d):
            zt[i, r] = (x[k, i] - shift[i]) * s
        for i in range(t):
            zt[d + i, r] = (y[k, i] - shift[d + i]) * s
        zt[d + t, r] = s


@numba.njit(**_JIT)
def shifted_gram(x, y, weight, shift, zt, gram, rows):  # pragma: no cover - compiled
    """Add the upper tiles of ``zᵀz``, ``z = [x - s, y - s, 1] · sqrt(w)``, to ``gram``.

    ``zt`` is the work buffer (padded columns × at least ``rows``, the rows
    per chunk), its padding rows zero; ``weight`` is empty when the rows
    are unweighted.  ``x`` is C-contiguous: the tiles of one chunk fetch the
    next chunk's bytes into the cache.
    """
    n, d = x.shape
    row_bytes = d * x.itemsize
    scale = np.empty(BLOCK)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        # Copy, shift, weight and transpose in one pass over the chunk's rows.
        _copy(x, y, weight, shift, zt, start, m, scale)
        ahead = min(rows, n - start - m)
        _tiles(zt, gram, m, x, (start + m) * row_bytes, ahead * row_bytes)
