"""Compiled loop of :mod:`mpitrain.svm._smo` (numba). Imported on first use.

libsvm's solver (Fan, Chen and Lin, JMLR 2005), step for step: the
second-order working-set selection, the two-variable update with its
clipping, and the gradient update, over a kernel-row cache with
least-recently-used eviction.  Kernel rows are kept in float32, as libsvm
keeps its ``Qfloat`` columns; the gradient is float64.  With shrinking, the
solver shrinks as libsvm does (variables at a bound whose gradient keeps
them there leave the active set, their gradients restored from ``G_bar``
before the end), visiting the variables in libsvm's order.

Kept apart so that importing :mod:`mpitrain.svm` does not import numba.

The functions share two tuples: ``kern = (X, sq, kind, gamma, coef0,
degree)``, the rows, their squared norms and libsvm's kernel; and ``rows =
(cache, slot_of, slot_row, last_used)``, the kernel-row cache (a slot per
cached row, the slot of each row or −1, and each slot's last use).  A
problem is ``prob = (row, sign, C)``: variable t is row ``row[t]`` with
label ``sign[t]`` and upper bound ``C[t]``.
"""

from __future__ import annotations

import numba
import numpy as np

# No fastmath: the working-set selection compares gradients exactly as
# libsvm does, and a reordered sum could change which pair it picks.
_JIT = {"nogil": True, "cache": True, "boundscheck": False}

#: libsvm's kernel codes.
LINEAR, POLY, RBF, SIGMOID = 0, 1, 2, 3
# libsvm's TAU: the curvature used where the pair's is not positive.
_TAU = 1e-12


@numba.njit(**_JIT)
def _kernel_row(kern, r, out):  # pragma: no cover - compiled
    # One row of the kernel matrix: K(x_r, x_s) for every s, into out (float32).
    X, sq, kind, gamma, coef0, degree = kern
    dots = np.dot(X, X[r])
    n = dots.shape[0]
    if kind == LINEAR:
        for s in range(n):
            out[s] = dots[s]
    elif kind == POLY:
        for s in range(n):
            out[s] = (gamma * dots[s] + coef0) ** degree
    elif kind == RBF:
        for s in range(n):
            out[s] = np.exp(-gamma * (sq[r] + sq[s] - 2.0 * dots[s]))
    else:
        for s in range(n):
            out[s] = np.tanh(gamma * dots[s] + coef0)


@numba.njit(**_JIT)
def _cached_row(kern, rows, r, tick):  # pragma: no cover - compiled
    cache, slot_of, slot_row, last_used = rows
    s = slot_of[r]
    if s < 0:
        # Evict the least recently used row; the row fetched just before
        # (the pair's other member) carries the current tick, so it stays.
        s = np.argmin(last_used)
        old = slot_row[s]
        if old >= 0:
            slot_of[old] = -1
        _kernel_row(kern, r, cache[s])
        slot_row[s] = r
        slot_of[r] = s
    last_used[s] = tick
    return cache[s]


@numba.njit(**_JIT)
def _be_shrunk(t, sign, C, alpha, G, g_max1, g_max2):  # pragma: no cover - compiled
    # libsvm's be_shrunk: a variable at a bound whose gradient says it stays there.
    if alpha[t] >= C[t]:
        if sign[t] > 0:
            return -G[t] > g_max1
        return -G[t] > g_max2
    if alpha[t] <= 0:
        if sign[t] > 0:
            return G[t] > g_max2
        return G[t] > g_max1
    return False


@numba.njit(**_JIT)
def _reconstruct_gradient(
    kern, rows, prob, p, alpha, G, G_bar, perm, active, tick
):  # pragma: no cover - compiled
    # The inactive variables' gradients: G_bar (the variables at their upper
    # bound) plus p, plus every free variable's column.
    row, sign, C = prob
    n = alpha.shape[0]
    for pos in range(active, n):
        t = perm[pos]
        G[t] = G_bar[t] + p[t]
    for pos in range(active):
        i = perm[pos]
        if 0 < alpha[i] < C[i]:
            k_i = _cached_row(kern, rows, row[i], tick)
            step = alpha[i] * sign[i]
            for q in range(active, n):
                t = perm[q]
                G[t] += step * sign[t] * k_i[row[t]]


@numba.njit(**_JIT)
def _shrink(prob, alpha, G, eps, perm, active, unshrunk):  # pragma: no cover - compiled
    # libsvm's do_shrinking, but for the gradient reconstruction it may ask
    # for: returns (new active count, the largest violations, whether to
    # reconstruct now).
    row, sign, C = prob
    g_max1 = -np.inf
    g_max2 = -np.inf
    for pos in range(active):
        t = perm[pos]
        if sign[t] > 0:
            if alpha[t] < C[t] and -G[t] >= g_max1:
                g_max1 = -G[t]
            if alpha[t] > 0 and G[t] >= g_max2:
                g_max2 = G[t]
        else:
            if alpha[t] < C[t] and -G[t] >= g_max2:
                g_max2 = -G[t]
            if alpha[t] > 0 and G[t] >= g_max1:
                g_max1 = G[t]
    return g_max1, g_max2, (not unshrunk) and g_max1 + g_max2 <= eps * 10


@numba.njit(**_JIT)
def _drop_shrunk(
    prob, alpha, G, g_max1, g_max2, perm, active
):  # pragma: no cover - compiled
    # Move the variables to shrink past the active count, as libsvm swaps them.
    row, sign, C = prob
    pos = 0
    while pos < active:
        if _be_shrunk(perm[pos], sign, C, alpha, G, g_max1, g_max2):
            active -= 1
            while active > pos:
                if not _be_shrunk(perm[active], sign, C, alpha, G, g_max1, g_max2):
                    perm[pos], perm[active] = perm[active], perm[pos]
                    break
                active -= 1
        pos += 1
    return active


@numba.njit(**_JIT)
def solve(
    kern, rows, prob, p, kdiag, alpha, G, G_bar, eps, max_iter, shrinking
):  # pragma: no cover - compiled
    """Minimise ½αᵀQα + pᵀα, 0 ≤ α ≤ C, signᵀα fixed, from a feasible α with G = Qα + p.

    ``Q[t, u] = sign[t]·sign[u]·K(row[t], row[u])`` (see the module's
    tuples).  ``G_bar`` is the part of G from the variables at their upper
    bound (``Σ C_u Q[:, u]``), which shrinking needs to restore the inactive
    gradients.  ``alpha``, ``G`` and ``G_bar`` are updated in place.
    Returns (iterations, 0 if optimal within eps else 1).

    Variables are visited in the order of ``perm``, a permutation that
    shrinking reorders exactly as libsvm swaps its arrays, so the working
    sets (and their ties) are libsvm's.
    """
    row, sign, C = prob
    n = alpha.shape[0]
    perm = np.arange(n)
    active = n
    unshrunk = False
    counter = min(n, 1000) + 1
    tick = 1
    iterations = 0
    while iterations < max_iter:
        counter -= 1
        if counter == 0:
            counter = min(n, 1000)
            if shrinking:
                g_max1, g_max2, restore = _shrink(
                    prob, alpha, G, eps, perm, active, unshrunk
                )
                if restore:
                    unshrunk = True
                    _reconstruct_gradient(
                        kern, rows, prob, p, alpha, G, G_bar, perm, active, tick
                    )
                    tick += 1
                    active = n
                active = _drop_shrunk(prob, alpha, G, g_max1, g_max2, perm, active)
        i, j = _select_working_set(
            kern, rows, prob, kdiag, alpha, G, eps, perm, active, tick
        )
        tick += 1
        if i < 0:
            # Optimal on the active set: restore every gradient and look again.
            _reconstruct_gradient(
                kern, rows, prob, p, alpha, G, G_bar, perm, active, tick
            )
            tick += 1
            active = n
            i, j = _select_working_set(
                kern, rows, prob, kdiag, alpha, G, eps, perm, active, tick
            )
            tick += 1
            if i < 0:
                return iterations, 0
            counter = 1  # shrink at the next iteration
        iterations += 1
        ri = row[i]
        rj = row[j]
        k_i = _cached_row(kern, rows, ri, tick)
        tick += 1
        k_j = _cached_row(kern, rows, rj, tick)
        tick += 1
        c_i = C[i]
        c_j = C[j]
        old_i = alpha[i]
        old_j = alpha[j]
        quad = kdiag[ri] + kdiag[rj] - 2.0 * k_i[rj]
        if quad <= 0:
            quad = _TAU
        if sign[i] != sign[j]:
            delta = (-G[i] - G[j]) / quad
            diff = alpha[i] - alpha[j]
            alpha[i] += delta
            alpha[j] += delta
            if diff > 0:
                if alpha[j] < 0:
                    alpha[j] = 0.0
                    alpha[i] = diff
            elif alpha[i] < 0:
                alpha[i] = 0.0
                alpha[j] = -diff
            if diff > c_i - c_j:
                if alpha[i] > c_i:
                    alpha[i] = c_i
                    alpha[j] = c_i - diff
            elif alpha[j] > c_j:
                alpha[j] = c_j
                alpha[i] = c_j + diff
        else:
            delta = (G[i] - G[j]) / quad
            total = alpha[i] + alpha[j]
            alpha[i] -= delta
            alpha[j] += delta
            if total > c_i:
                if alpha[i] > c_i:
                    alpha[i] = c_i
                    alpha[j] = total - c_i
            elif alpha[j] < 0:
                alpha[j] = 0.0
                alpha[i] = total
            if total > c_j:
                if alpha[j] > c_j:
                    alpha[j] = c_j
                    alpha[i] = total - c_j
            elif alpha[i] < 0:
                alpha[i] = 0.0
                alpha[j] = total
        step_i = sign[i] * (alpha[i] - old_i)
        step_j = sign[j] * (alpha[j] - old_j)
        for pos in range(active):
            t = perm[pos]
            rt = row[t]
            G[t] += sign[t] * (step_i * k_i[rt] + step_j * k_j[rt])
        # G_bar follows the variables that reach or leave their upper bound.
        if (old_i >= c_i) != (alpha[i] >= c_i):
            change = c_i * sign[i] if alpha[i] >= c_i else -c_i * sign[i]
            for t in range(n):
                G_bar[t] += change * sign[t] * k_i[row[t]]
        if (old_j >= c_j) != (alpha[j] >= c_j):
            change = c_j * sign[j] if alpha[j] >= c_j else -c_j * sign[j]
            for t in range(n):
                G_bar[t] += change * sign[t] * k_j[row[t]]
    return iterations, 1


@numba.njit(**_JIT)
def _select_working_set(
    kern, rows, prob, kdiag, alpha, G, eps, perm, active, tick
):  # pragma: no cover - compiled
    # libsvm's WSS3 over the active positions: (-1, -1) when optimal within eps.
    row, sign, C = prob
    g_max = -np.inf
    i = -1
    for pos in range(active):
        t = perm[pos]
        if sign[t] > 0:
            if alpha[t] < C[t] and -G[t] >= g_max:
                g_max = -G[t]
                i = t
        elif alpha[t] > 0 and G[t] >= g_max:
            g_max = G[t]
            i = t
    if i == -1:
        return -1, -1
    ri = row[i]
    k_i = _cached_row(kern, rows, ri, tick)
    g_max2 = -np.inf
    j = -1
    obj_min = np.inf
    for pos in range(active):
        t = perm[pos]
        if sign[t] > 0:
            if alpha[t] > 0:
                grad_diff = g_max + G[t]
                if G[t] >= g_max2:
                    g_max2 = G[t]
            else:
                continue
        elif alpha[t] < C[t]:
            grad_diff = g_max - G[t]
            if -G[t] >= g_max2:
                g_max2 = -G[t]
        else:
            continue
        if grad_diff > 0:
            rt = row[t]
            quad = kdiag[ri] + kdiag[rt] - 2.0 * k_i[rt]
            if quad <= 0:
                quad = _TAU
            obj = -(grad_diff * grad_diff) / quad
            if obj <= obj_min:
                j = t
                obj_min = obj
    if g_max + g_max2 < eps or j == -1:
        return -1, -1
    return i, j


@numba.njit(**_JIT)
def rho(sign, C, alpha, G):  # pragma: no cover - compiled
    """libsvm's ``calculate_rho``: the mean of y·G over free variables, else the bounds' midpoint."""
    upper = np.inf
    lower = -np.inf
    free = 0
    total = 0.0
    for t in range(alpha.shape[0]):
        yg = sign[t] * G[t]
        if alpha[t] >= C[t]:
            if sign[t] < 0:
                upper = min(upper, yg)
            else:
                lower = max(lower, yg)
        elif alpha[t] <= 0:
            if sign[t] > 0:
                upper = min(upper, yg)
            else:
                lower = max(lower, yg)
        else:
            free += 1
            total += yg
    if free > 0:
        return total / free
    return (upper + lower) / 2.0


@numba.njit(**_JIT)
def gather_square(out, src, new_at, old_at, lo, hi):  # pragma: no cover - compiled
    """``out[new_at[a], new_at[b]] = src[old_at[a], old_at[b]]`` for rows a in [lo, hi), every b.

    Row by row: each source row is read once and its entries land in one
    row of ``out`` (a fancy-indexed ``np.ix_`` copy builds a temporary of
    the whole block first).
    """
    m = new_at.shape[0]
    for a in range(lo, hi):
        target = out[new_at[a]]
        source = src[old_at[a]]
        for b in range(m):
            target[new_at[b]] = source[old_at[b]]


@numba.njit(**_JIT)
def mirror_rows(K, new, kept, lo, hi):  # pragma: no cover - compiled
    """``K[kept[b], new[a]] = K[new[a], kept[b]]`` for b in [lo, hi), every a: the symmetric half.

    Sixteen target rows at a time, so that each source row's read serves
    sixteen writes and the writes run along their rows.
    """
    for b0 in range(lo, hi, 16):
        b1 = min(hi, b0 + 16)
        for a in range(new.shape[0]):
            source = K[new[a]]
            col = new[a]
            for b in range(b0, b1):
                K[kept[b], col] = source[kept[b]]
