"""Random states agreed across ranks: every rank draws the same numbers.

Estimators that replay scikit-learn's draws on all ranks' rows (k-means++,
the MLP's initial weights and shuffles) need one generator in the same
state on every rank.  An int ``random_state`` seeds every rank alike; a
``RandomState`` instance or ``None`` (numpy's global generator) may be in a
different state on each rank, so rank 0's state is the one used.
"""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils import check_random_state

from mpitrain.comm import bcast_object

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["agreed_random_state"]


def agreed_random_state(random_state: Any, comm: Intracomm) -> np.random.RandomState:
    """A new ``RandomState`` in the same state on every rank. Collective over ``comm``.

    An int (numpy integers included) seeds it as scikit-learn's
    ``check_random_state`` would; otherwise it takes rank 0's state of
    ``check_random_state(random_state)``.  One broadcast whatever the
    parameter, so every rank makes the same collective call.  The caller's
    generator is not advanced.

    Parameters
    ----------
    random_state : int, RandomState instance or None
    comm : mpi4py.MPI.Intracomm

    Returns
    -------
    numpy.random.RandomState
    """
    seeded = isinstance(random_state, Integral)
    state = None
    if not seeded and comm.Get_rank() == 0:
        state = check_random_state(random_state).get_state()
    state = bcast_object(state, comm)
    if seeded:
        return np.random.RandomState(random_state)
    agreed = np.random.RandomState()
    agreed.set_state(state)
    return agreed
