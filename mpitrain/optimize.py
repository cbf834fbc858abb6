"""A resumable L-BFGS-B: scipy's own iterations, with a state that a checkpoint can save.

The distributed part (rank 0 minimises, every rank evaluates its rows at
rank 0's point) is :func:`mpitrain.comm.minimize_on_root`; this module only
makes the minimiser's state savable and restorable bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.utils.fixes import lbfgsb_message, lbfgsb_setulb

if TYPE_CHECKING:  # pragma: no cover
    from scipy.optimize import OptimizeResult


# ----------------------------------------------------------------------------
# L-BFGS-B with a state that can be saved


#: Drive scipy's routine directly when its interface is the known one (set
#: to False to force restarting from the saved iterate, as on old scipy).
EXACT_LBFGSB = lbfgsb_setulb() is not None

_STATE_ARRAYS = (
    "x",
    "g",
    "wa",
    "iwa",
    "task",
    "ln_task",
    "lsave",
    "isave",
    "dsave",
    "last_x",
)


def lbfgsb(
    fun_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    gtol: float,
    ftol: float,
    maxiter: int,
    maxls: int = 20,
    maxcor: int = 10,
    maxfun: int = 15000,
    resume: dict | None = None,
    iteration_done: Callable[[Callable[[], dict]], None] | None = None,
) -> OptimizeResult:
    """``scipy.optimize.minimize(fun_and_grad, x0, method="L-BFGS-B", jac=True)``, resumable.

    Runs scipy's own L-BFGS-B step routine in the loop that scipy's
    ``minimize`` runs, evaluating where it asks, so the iterates, the
    iteration count and the result are scipy's bit for bit; in between
    iterations its complete state is plain arrays, which can be saved and
    given back as ``resume`` to continue exactly where it was.  Local (runs
    on rank 0 inside :func:`mpitrain.comm.minimize_on_root`).

    Without bounds, as mpitrain's classifiers use it.  If scipy's routine has
    another interface (scipy older than 1.15, or :data:`EXACT_LBFGSB` set to
    ``False``), a resumed run restarts scipy's minimiser from the saved
    iterate instead: the same optimum within ``gtol``/``ftol``, not the same
    bits.

    Parameters
    ----------
    fun_and_grad : callable
        ``x -> (f, gradient)``.
    x0 : ndarray
        Starting point (ignored when resuming).
    gtol, ftol, maxiter, maxls, maxcor, maxfun
        scipy's options of the same names.
    resume : dict, default=None
        A state given to ``iteration_done`` earlier.
    iteration_done : callable, default=None
        Called after each iteration that is not the last, with a function
        that returns the state at that point (copies; call it only to save).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x``, ``fun``, ``jac``, ``nit`` (counting the iterations before a
        resume), ``nfev``, ``njev``, ``status``, ``success``, ``message``.
    """
    from scipy.optimize import OptimizeResult

    x0 = np.asarray(x0, dtype=np.float64).ravel()
    # A state saved by the fallback (older scipy) can only be restarted from.
    if not EXACT_LBFGSB or (resume is not None and resume.get("kind") == "restart"):
        return _lbfgsb_by_restart(
            fun_and_grad,
            x0,
            gtol=gtol,
            ftol=ftol,
            maxiter=maxiter,
            maxls=maxls,
            maxcor=maxcor,
            maxfun=maxfun,
            resume=resume,
            iteration_done=iteration_done,
        )
    setulb = lbfgsb_setulb()
    if setulb is None:  # pragma: no cover - EXACT_LBFGSB forced on where it is not
        raise RuntimeError("scipy's L-BFGS-B step does not have the known interface")
    n, m = x0.size, maxcor
    factr = ftol / np.finfo(float).eps
    nbd = np.zeros(n, np.int32)
    lower = np.zeros(n, np.float64)
    upper = np.zeros(n, np.float64)

    def evaluate(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = fun_and_grad(x.copy())
        # As scipy's ScalarFunction: a true scalar, a 1-D gradient.
        return (f if np.isscalar(f) else np.asarray(f).item()), np.atleast_1d(g)

    if resume is None:
        x = np.array(x0, dtype=np.float64)
        f: Any = np.array(0.0, dtype=np.float64)
        g = np.zeros(n, np.float64)
        wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
        iwa = np.zeros(3 * n, np.int32)
        task = np.zeros(2, np.int32)
        ln_task = np.zeros(2, np.int32)
        lsave = np.zeros(4, np.int32)
        isave = np.zeros(44, np.int32)
        dsave = np.zeros(29, np.float64)
        nit = 0
        # scipy evaluates at x0 when it wraps the function, before the first step.
        last_x = x.copy()
        last_f, last_g = evaluate(x)
        nfev = 1
    else:
        if resume["x"].shape != (n,) or resume["m"] != m:
            raise ValueError(
                f"the saved L-BFGS-B state ({resume['x'].size} unknowns, memory {resume['m']}) "
                f"does not fit this problem ({n} unknowns, memory {m})"
            )
        x, g, wa, iwa, task, ln_task, lsave, isave, dsave, last_x = (
            np.array(resume[k], copy=True) for k in _STATE_ARRAYS
        )
        f, nit, nfev = resume["f"], int(resume["nit"]), int(resume["nfev"])
        last_f, last_g = resume["last_f"], np.array(resume["last_g"], copy=True)

    def snapshot() -> dict:
        state = {
            k: np.array(v, copy=True)
            for k, v in zip(
                _STATE_ARRAYS,
                (x, g, wa, iwa, task, ln_task, lsave, isave, dsave, last_x),
            )
        }
        state.update(
            kind="exact",
            m=m,
            f=f,
            nit=nit,
            nfev=nfev,
            last_f=last_f,
            last_g=np.array(last_g, copy=True),
        )
        return state

    while True:
        g = g.astype(np.float64)
        setulb(
            m,
            x,
            lower,
            upper,
            nbd,
            f,
            g,
            factr,
            gtol,
            wa,
            iwa,
            task,
            lsave,
            isave,
            dsave,
            maxls,
            ln_task,
        )
        if task[0] == 3:  # FG: evaluate at x (scipy's wrapper caches the last point)
            if not np.array_equal(x, last_x):
                last_x = x.copy()
                last_f, last_g = evaluate(x)
                nfev += 1
            f, g = last_f, last_g
        elif task[0] == 1:  # NEW_X: an iteration is complete
            nit += 1
            if nit >= maxiter:
                task[0], task[1] = 5, 504
            elif nfev > maxfun:
                task[0], task[1] = 5, 502
            elif iteration_done is not None:
                iteration_done(snapshot)
        else:
            break

    if task[0] == 4:
        warnflag = 0
    elif nfev > maxfun or nit >= maxiter:
        warnflag = 1
    else:
        warnflag = 2
    return OptimizeResult(
        fun=f,
        jac=g,
        nfev=nfev,
        njev=nfev,
        nit=nit,
        status=warnflag,
        message=lbfgsb_message(int(task[0]), int(task[1])),
        x=x,
        success=warnflag == 0,
    )


def _lbfgsb_by_restart(
    fun_and_grad,
    x0,
    *,
    gtol,
    ftol,
    maxiter,
    maxls,
    maxcor,
    maxfun,
    resume,
    iteration_done,
) -> OptimizeResult:
    """Fallback of :func:`lbfgsb`: scipy's minimiser, restarted from a saved iterate. Local."""
    from scipy import optimize

    done = 0
    if resume is not None:
        if resume["x"].shape != x0.shape:
            raise ValueError("the saved L-BFGS-B state does not fit this problem")
        x0, done = np.array(resume["x"], copy=True), int(resume["nit"])

    def callback(intermediate_result) -> None:
        callback.count += 1
        nit = done + callback.count
        if iteration_done is not None and nit < maxiter:
            # scipy >= 1.11 passes an OptimizeResult to a callback whose
            # parameter has this name; older releases pass the iterate itself.
            x = getattr(intermediate_result, "x", intermediate_result)
            xk = np.array(x, copy=True)
            iteration_done(lambda: {"kind": "restart", "x": xk, "nit": nit})

    callback.count = 0
    result = optimize.minimize(
        fun_and_grad,
        x0,
        method="L-BFGS-B",
        jac=True,
        callback=callback,
        options={
            "maxiter": max(maxiter - done, 1),
            "maxls": maxls,
            "gtol": gtol,
            "ftol": ftol,
            "maxcor": maxcor,
            "maxfun": maxfun,
        },
    )
    result.nit = done + int(result.nit)
    return result
