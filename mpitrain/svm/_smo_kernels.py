"""Compiled loop of :mod:`mpitrain.svm._smo` (numba). Imported on first use.

libsvm's solver (Fan, Chen and Lin, JMLR 2005), step for step: the
second-order working-set selection, the two-variable update with its
clipping, and the gradient update, over a kernel-row cache with
least-recently-used eviction.  Kernel rows are kept in float32, as libsvm
keeps its ``Qfloat`` columns; the gradient is float64.  No shrinking: the
warm-started refits this solver is for take few iterations, and the
optimum does not depend on it.

Kept apart so that importing :mod:`mpitrain.svm` does not import numba.
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
def _kernel_row(
    X, sq, r, kind, gamma, coef0, degree, out
):  # pragma: no cover - compiled
    # One row of the kernel matrix: K(x_r, x_s) for every s, into out (float32).
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
def _cached_row(
    X, sq, r, kind, gamma, coef0, degree, cache, slot_of, slot_row, last_used, tick
):  # pragma: no cover - compiled
    s = slot_of[r]
    if s < 0:
        # Evict the least recently used row; the row fetched just before
        # (the pair's other member) carries the current tick, so it stays.
        s = np.argmin(last_used)
        old = slot_row[s]
        if old >= 0:
            slot_of[old] = -1
        _kernel_row(X, sq, r, kind, gamma, coef0, degree, cache[s])
        slot_row[s] = r
        slot_of[r] = s
    last_used[s] = tick
    return cache[s]


@numba.njit(**_JIT)
def solve(
    X,
    sq,
    kind,
    gamma,
    coef0,
    degree,
    row,
    sign,
    C,
    kdiag,
    alpha,
    G,
    eps,
    max_iter,
    cache,
    slot_of,
    slot_row,
    last_used,
):  # pragma: no cover - compiled
    """Minimise ½αᵀQα + pᵀα, 0 ≤ α ≤ C, signᵀα fixed, from a feasible α with G = Qα + p.

    Variable t stands for row ``row[t]`` of X with label ``sign[t]`` (±1):
    ``Q[t, u] = sign[t]·sign[u]·K(row[t], row[u])``.  ``alpha`` and ``G`` are
    updated in place.  Returns (iterations, 0 if optimal within eps else 1).
    """
    n = alpha.shape[0]
    tick = 1
    iterations = 0
    while True:
        if iterations >= max_iter:
            return iterations, 1
        # i: the most violating variable that can move up (libsvm's I_up).
        g_max = -np.inf
        i = -1
        for t in range(n):
            if sign[t] > 0:
                if alpha[t] < C[t] and -G[t] >= g_max:
                    g_max = -G[t]
                    i = t
            elif alpha[t] > 0 and G[t] >= g_max:
                g_max = G[t]
                i = t
        if i == -1:
            return iterations, 0
        ri = row[i]
        k_i = _cached_row(
            X,
            sq,
            ri,
            kind,
            gamma,
            coef0,
            degree,
            cache,
            slot_of,
            slot_row,
            last_used,
            tick,
        )
        tick += 1
        # j: the partner that decreases the objective most (second order).
        g_max2 = -np.inf
        j = -1
        obj_min = np.inf
        for t in range(n):
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
            return iterations, 0
        rj = row[j]
        k_j = _cached_row(
            X,
            sq,
            rj,
            kind,
            gamma,
            coef0,
            degree,
            cache,
            slot_of,
            slot_row,
            last_used,
            tick,
        )
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
        for t in range(n):
            rt = row[t]
            G[t] += sign[t] * (step_i * k_i[rt] + step_j * k_j[rt])
        iterations += 1


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
