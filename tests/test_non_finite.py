"""A non-finite value stops the least-squares statistics with one clean error, not numpy's warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import regression_problem, write_h5

from mpitrain.decomposition import pca_statistics
from mpitrain.stats import StatisticsAccumulator
from mpitrain.testing import mpirun


@pytest.mark.parametrize("column", ["X", "y"])
@pytest.mark.parametrize("use_kernel", [False, True])
def test_accumulator_names_the_row_without_numpy_warnings(column, use_kernel):
    if use_kernel:
        pytest.importorskip("numba")  # without it the BLAS path serves, with a warning
    X, y = regression_problem(n=300, d=4)
    Y = y[:, None].copy()
    bad = 200
    (X if column == "X" else Y)[bad, 0] = np.inf  # inf minus the inf shift is NaN
    acc = StatisticsAccumulator(4, 1, use_kernel=use_kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        with pytest.raises(
            ValueError, match=f"Input {column} contains NaN or infinity"
        ):
            acc.add(X, Y, first_row=1000)
    with pytest.raises(ValueError, match=f"the first at row {1000 + bad}$"):
        StatisticsAccumulator(4, 1, use_kernel=use_kernel).add(X, Y, first_row=1000)


def test_accumulator_refuses_overflowing_squares_without_numpy_warnings():
    X, y = regression_problem(n=50, d=3)
    X[10, 1] = 1e200  # finite, but its square overflows float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="sums of squares overflow float64"):
            StatisticsAccumulator(3, 1, use_kernel=False).add(X, y[:, None])


def test_pca_statistics_name_the_global_row_without_numpy_warnings():
    X = np.random.default_rng(1).normal(size=(120, 3))
    X[70, 2] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="the first at row 570$"):
            pca_statistics(X, first_row=500)


def test_cli_train_on_infinity_prints_only_the_clean_error(tmp_path, mpitrain_cli):
    X, y = regression_problem(n=400, d=5)
    X[300, 1] = np.inf
    data = write_h5(tmp_path / "inf.h5", X, y)
    argv = ["train", data, "--model", "ridge", "--out", str(tmp_path / "m.skops")]
    result = mpirun(2, [*mpitrain_cli, *argv, "--quiet"], timeout=400)
    assert result.returncode == 1, result.stderr
    assert "RuntimeWarning" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Input X contains NaN or infinity" in lines[0], lines[0]
    assert "the first at row 300" in lines[0], lines[0]
    assert not (tmp_path / "m.skops").exists()


def _ridge_failure_body(comm, X, y):
    from mpitrain.data import row_range
    from mpitrain.linear_model import Ridge

    start, stop = row_range(len(y), comm.Get_size(), comm.Get_rank())
    try:
        Ridge(comm=comm).fit(X[start:stop], y[start:stop])
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.mpi(ranks=[2, 3])
def test_ridge_from_python_names_the_global_row(mpi_ranks):
    from mpitrain.testing import run_function

    X, y = regression_problem(n=157, d=4)
    # Finite, so the input check passes; its square overflows in the sums.
    X[131, 2] = 1e200  # on the last rank, far from its first row
    from mpitrain.data import row_range

    # The overflow is found per chunk: named by its chunk's first row, here
    # the first of the last rank's rows (not 0, its row in the rank's slice).
    first = row_range(157, mpi_ranks, mpi_ranks - 1)[0]
    for message in run_function(_ridge_failure_body, mpi_ranks, X, y):
        assert message is not None and f"overflow float64 near row {first}" in message
