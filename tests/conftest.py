"""Shared fixtures.  The pytest process itself never initialises MPI."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

pytest_plugins = ["mpitrain.testing"]


def write_h5(path, X, y=None, **extra) -> str:
    """Write X (and y, and any extra named arrays) to an HDF5 file."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        if y is not None:
            f.create_dataset("y", data=y)
        for name, value in extra.items():
            f.create_dataset(name, data=value)
    return str(path)


def fold_failure_problem():
    """Two-class rows and 3 fold ids where fold 0's fit fails and the others' work.

    Fold 0 holds every class-1 row, so its training rows have one class;
    folds 1 and 2 hold class-0 rows only (their fits work; their roc_auc is
    undefined).  Returns ``X, y, folds, splits`` (``splits``: scikit-learn's
    ``(train, test)`` pairs of the same folds).
    """
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3))
    y = np.r_[np.zeros(30, dtype=int), np.ones(30, dtype=int)]
    X[y == 1] += 1.0
    folds = np.r_[np.arange(30) % 2 + 1, np.zeros(30, dtype=int)]
    splits = [
        (np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)
    ]
    return X, y, folds, splits


def regression_problem(n=101, d=5, seed=0, offset=0.0, t=None, dtype=np.float64):
    """Well-conditioned regression rows; ``offset`` shifts every feature's mean."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + offset
    coef = rng.uniform(-3, 3, size=(d,) if t is None else (d, t))
    y = (X - offset) @ coef + 1.5 + 0.1 * rng.normal(size=(n,) if t is None else (n, t))
    return X.astype(dtype), y


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items) -> None:
    """Mark ``slurm`` every test that uses the ``slurm`` fixture (it needs the local Slurm)."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture
def mpitrain_cli():
    """The argv prefix that runs the mpitrain command with this Python."""
    return [sys.executable, "-m", "mpitrain"]
