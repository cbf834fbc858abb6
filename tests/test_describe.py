"""describe: every statistic against numpy on all rows, at 1-4 ranks, and the pure pieces alone."""

from __future__ import annotations

import json
import warnings
from functools import reduce

import numpy as np
import pytest
from conftest import write_h5

from mpitrain.data import row_range
from mpitrain.describe import DEFAULT_QUANTILES, format_description
from mpitrain.stats import (
    ColumnStats,
    Histograms,
    float_keys,
    histogram_quantiles,
    keys_to_floats,
    linear_quantiles,
)
from mpitrain.testing import run_function

LEVELS = np.array(DEFAULT_QUANTILES)
LAYOUTS = ["balanced", "first_empty", "last_empty"]


def _my_rows(n: int, size: int, rank: int, layout: str) -> slice:
    """A rank's rows; in the *_empty layouts one rank holds none and the others split all rows."""
    if layout == "balanced" or size == 1:
        return slice(*row_range(n, size, rank))
    empty = 0 if layout == "first_empty" else size - 1
    if rank == empty:
        return slice(0, 0)
    others = [r for r in range(size) if r != empty]
    return slice(*row_range(n, size - 1, others.index(rank)))


def _data():
    """Features with ties, a large offset, NaN (a column missing on whole ranks) and ±inf; int labels."""
    rng = np.random.default_rng(7)
    n = 157
    X = np.column_stack(
        [
            rng.normal(size=n),
            1e6 + 1e3 * rng.normal(size=n),  # E[x²] - E[x]² would lose every digit
            rng.integers(0, 5, size=n).astype(
                float
            ),  # ties: quantiles fall on repeated values
            rng.exponential(size=n),
            rng.normal(size=n),
        ]
    )
    X[:70, 3] = np.nan  # no value at all on the first rank(s)
    X[rng.random(n) < 0.1, 0] = np.nan
    X[[3, 50, 120], 4] = [np.inf, -np.inf, np.inf]
    X[[4, 90], 4] = np.nan
    y = rng.integers(0, 3, size=n)
    return X, y


def _quantile_data():
    """Ties, negatives, ±0.0, NaN and ±inf: the cases an exact order statistic must get right."""
    rng = np.random.default_rng(11)
    n = 203
    X = np.column_stack(
        [
            rng.normal(size=n) * 1e-300,  # tiny and subnormal neighbours
            np.where(rng.random(n) < 0.5, -0.0, 0.0),  # signed zeros only
            rng.integers(-3, 3, size=n).astype(float),  # ties and negatives
            rng.standard_cauchy(size=n),  # heavy tails
            np.full(n, np.nan),  # no value at all
            rng.normal(size=n),
        ]
    )
    X[rng.random(n) < 0.15, 2] = np.nan
    X[:40, 3] = np.nan
    X[[5, 6], 5] = [np.inf, -np.inf]
    return X


def _file_data():
    rng = np.random.default_rng(5)
    n = 301
    X = rng.normal(size=(n, 4)) * [1, 10, 0.1, 1] + [0, 5, 0, 100]
    X[rng.random((n, 4)) < 0.07] = np.nan
    labels = np.array(["ant", "bee", "cat", "dog"], dtype=object)[
        rng.integers(0, 4, size=n)
    ]
    y = rng.normal(size=n)
    y[[2, 200]] = np.nan
    return X, labels, y


def _gold_body(comm, path, tiny_path):
    from mpitrain.describe import describe_arrays, describe_file
    from mpitrain.stats import global_order_statistics, global_quantiles

    X, y = _data()
    out = {}
    for layout in LAYOUTS:
        rows = _my_rows(len(X), comm.Get_size(), comm.Get_rank(), layout)
        out[layout] = describe_arrays(X[rows], y[rows], comm=comm)
    rows = _my_rows(len(X), comm.Get_size(), comm.Get_rank(), "first_empty")
    out["exact"] = describe_arrays(X[rows], y[rows], exact_quantiles=True, comm=comm)
    out["no_target"] = describe_arrays(
        X[rows], comm=comm, block_rows=7, quantiles=[0.5, 0.1]
    )

    Q = _quantile_data()
    rows = _my_rows(len(Q), comm.Get_size(), comm.Get_rank(), "last_empty")
    levels = [0.0, 0.01, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out["quantiles"] = global_quantiles(Q[rows], levels, comm=comm)
        out["median"] = global_quantiles(Q[rows], 0.5, comm=comm)
    out["orders"] = global_order_statistics(
        Q[rows], np.array([[0] * 6, [57] * 6, [150] * 6, [500] * 6]), comm=comm
    )

    # Small blocks: streamed twice (the files reopened); default blocks: kept and read once.
    out["file_labels"] = describe_file(path, y="label", block_rows=16, comm=comm)
    out["file_numeric"] = describe_file(path, y="y", comm=comm)
    out["file_tiny"] = describe_file(
        tiny_path, y="y", comm=comm
    )  # ranks without rows at 3 and 4 ranks
    return out


def _finite_columns(Z):
    return [Z[:, j][np.isfinite(Z[:, j])] for j in range(Z.shape[1])]


def _check_columns(result, Z, names, *, exact=False, levels=LEVELS):
    """Every column statistic of ``result`` against numpy on all rows ``Z``."""
    assert [c["name"] for c in result["columns"]] == names
    for j, (c, values) in enumerate(zip(result["columns"], _finite_columns(Z))):
        column = Z[:, j]
        assert c["count"] == values.size
        assert c["nan"] == np.isnan(column).sum()
        assert (
            c["posinf"] == (column == np.inf).sum()
            and c["neginf"] == (column == -np.inf).sum()
        )
        assert c["missing"] == c["nan"] + c["posinf"] + c["neginf"]
        if values.size == 0:
            assert (
                c["mean"] is None
                and c["min"] is None
                and all(q is None for q in c["quantiles"])
            )
            continue
        np.testing.assert_allclose(c["mean"], values.mean(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c["std"], values.std(ddof=1), rtol=1e-9)
        assert c["min"] == values.min() and c["max"] == values.max()
        reference = np.quantile(values, levels)
        got, bound = np.array(c["quantiles"]), np.array(c["quantile_bounds"])
        if exact:
            assert np.array_equal(got, reference) and (bound == 0).all(), (
                c["name"],
                got - reference,
            )
        else:
            assert (np.abs(got - reference) <= bound).all(), (
                c["name"],
                got - reference,
                bound,
            )
            # Never more than one bin width, and the extremes are exact.
            assert (
                bound
                <= (values.max() - values.min()) / result["histogram_bins"] * (1 + 1e-9)
            ).all()
            assert (got[levels == 0] == values.min()).all() and (
                got[levels == 1] == values.max()
            ).all()


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_numpy_on_all_rows(mpi_ranks, tmp_path):
    Xf, labels, yf = _file_data()
    path = write_h5(tmp_path / "data.h5", Xf, y=yf, label=labels.astype("S"))
    tiny = write_h5(tmp_path / "tiny.h5", Xf[:2].astype(np.float32), y=np.array([1, 0]))
    per_rank = run_function(_gold_body, mpi_ranks, path, tiny)
    out = per_rank[0]

    # Identical on every rank, and JSON as it stands (no NaN or numpy types).
    for other in per_rank[1:]:
        for key in (
            "balanced",
            "first_empty",
            "last_empty",
            "exact",
            "file_labels",
            "file_numeric",
            "file_tiny",
        ):
            assert json.dumps(other[key], allow_nan=False) == json.dumps(
                out[key], allow_nan=False
            )
        for key in ("quantiles", "median", "orders"):
            assert np.array_equal(other[key], out[key], equal_nan=True)

    X, y = _data()
    Z = np.column_stack([X, y])
    names = [f"x{j}" for j in range(X.shape[1])] + ["y"]
    classes, counts = np.unique(y, return_counts=True)
    for layout in LAYOUTS + ["exact"]:
        result = out[layout]
        assert (
            result["rows"] == len(X)
            and result["features"] == X.shape[1]
            and result["ranks"] == mpi_ranks
        )
        assert result["rows_with_missing"] == (~np.isfinite(X)).any(axis=1).sum()
        _check_columns(result, Z, names, exact=layout == "exact")
        assert result["columns"][-1]["role"] == "target"
        assert result["quantiles_approximate"] is (layout != "exact")
        target = result["target"]
        assert (
            target["classes"] == classes.tolist()
            and target["counts"] == counts.tolist()
        )
        assert target["missing"] == 0 and target["rows"] == len(y)
        slices = [
            _my_rows(
                len(X), mpi_ranks, r, "first_empty" if layout == "exact" else layout
            )
            for r in range(mpi_ranks)
        ]
        overall = counts / counts.sum()
        for rank, (part, rows) in enumerate(zip(result["per_rank"], slices)):
            assert part["rank"] == rank and part["rows"] == rows.stop - rows.start
            mine = np.array([(y[rows] == c).sum() for c in classes])
            assert part["class_counts"] == mine.tolist()
            if mine.sum():
                np.testing.assert_allclose(part["class_proportions"], mine / mine.sum())
                np.testing.assert_allclose(
                    part["class_tv_distance"],
                    0.5 * np.abs(mine / mine.sum() - overall).sum(),
                )
            else:
                assert (
                    part["class_tv_distance"] is None
                    and part["class_proportions"] is None
                )
            assert part["missing_values"] == (~np.isfinite(X[rows])).sum()
            for j, mean in enumerate(part["mean"]):
                values = Z[rows, j][np.isfinite(Z[rows, j])]
                assert (mean is None) == (values.size == 0)
                if values.size:
                    np.testing.assert_allclose(mean, values.mean(), rtol=1e-12)
        # Random labels and features: nothing to warn about.
        assert result["warnings"] == []

    no_target = out["no_target"]
    assert no_target["target"] is None and len(no_target["columns"]) == X.shape[1]
    _check_columns(no_target, X, names[:-1], levels=np.array([0.5, 0.1]))

    # Exact global quantiles and order statistics: numpy's own bits.
    Q = _quantile_data()
    levels = [0.0, 0.01, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = np.nanquantile(Q, levels, axis=0)
        assert np.array_equal(out["median"], np.nanmedian(Q, axis=0), equal_nan=True)
    assert np.array_equal(out["quantiles"], reference, equal_nan=True)
    for j in range(Q.shape[1]):
        ordered = np.sort(Q[:, j][~np.isnan(Q[:, j])])
        for t, order in enumerate([0, 57, 150, 500]):
            expected = ordered[order] if order < ordered.size else np.nan
            assert np.array_equal(out["orders"][t, j], expected, equal_nan=True), (t, j)

    # The HDF5 file: text labels streamed in small blocks, and a numeric target kept in memory.
    file_names = [f"x{j}" for j in range(4)]
    result = out["file_labels"]
    assert result["source"] == str(path) and result["rows"] == len(Xf)
    _check_columns(result, Xf, file_names)
    classes, counts = np.unique(labels, return_counts=True)
    assert (
        result["target"]["classes"] == classes.tolist()
        and result["target"]["counts"] == counts.tolist()
    )
    assert result["target"]["dtype"] == "str"
    for rank, part in enumerate(result["per_rank"]):
        start, stop = row_range(len(Xf), mpi_ranks, rank)
        assert (part["start"], part["stop"], part["rows"]) == (
            start,
            stop,
            stop - start,
        )
        assert part["class_counts"] == [
            int((labels[start:stop] == c).sum()) for c in classes
        ]
    result = out["file_numeric"]
    _check_columns(result, np.column_stack([Xf, yf]), file_names + ["y"])
    assert result["target"]["missing"] == 2
    assert (
        result["target"]["classes"] is None
        and "not treated as classes" in result["target"]["note"]
    )
    result = out["file_tiny"]
    tiny = np.column_stack([Xf[:2].astype(np.float32).astype(np.float64), [1, 0]])
    _check_columns(result, tiny, file_names + ["y"])
    assert result["target"]["classes"] == [0, 1] and result["target"]["counts"] == [
        1,
        1,
    ]
    assert [p["rows"] for p in result["per_rank"]] == [
        stop - start
        for start, stop in (row_range(2, mpi_ranks, r) for r in range(mpi_ranks))
    ]

    # The text rendering holds the same numbers.
    text = format_description(out["balanced"])
    assert (
        "x0" in text
        and "y (target)" in text
        and "quantile ±" in text
        and "class" in text
    )
    assert f"{out['balanced']['columns'][1]['mean']:.4g}" in text
    assert "quantiles are exact" in format_description(out["exact"])


def _shift_body(comm):
    """Sorted slices warn, shuffled ones do not; errors found on one rank are agreed."""
    from mpitrain.describe import describe_arrays
    from mpitrain.errors import DistributedError
    from mpitrain.stats import global_quantiles

    rng = np.random.default_rng(3)
    n = 2000
    X = rng.normal(size=(n, 3))
    y = (X[:, 1] + rng.normal(size=n) > 0).astype(int)
    rows = slice(*row_range(n, comm.Get_size(), comm.Get_rank()))
    shuffled = rng.permutation(n)
    by_x0, by_label = np.argsort(X[:, 0]), np.argsort(y, kind="stable")
    out = {}
    for name, order in (
        ("shuffled", shuffled),
        ("sorted_x0", by_x0),
        ("sorted_label", by_label),
    ):
        out[name] = describe_arrays(X[order][rows], y[order][rows], comm=comm)[
            "warnings"
        ]

    errors = {}
    bad = X[rows]
    if comm.Get_rank() == comm.Get_size() - 1:  # text on one rank only
        bad = bad.astype(object)
        bad[0, 0] = "text"
    last = comm.Get_rank() == comm.Get_size() - 1
    calls = (
        ("text", describe_arrays, (bad,)),
        ("columns", describe_arrays, (X[rows][:, : 2 + comm.Get_rank() % 2],)),
        ("y_length", describe_arrays, (X[rows], y[rows][1:])),
        ("quantiles_1d", global_quantiles, (X[rows][:, 0] if last else X[rows], 0.5)),
        (
            "quantiles_columns",
            global_quantiles,
            (X[rows][:, : 2 + comm.Get_rank() % 2], 0.5),
        ),
    )
    for name, function, args in calls:
        try:
            function(*args, comm=comm)
            errors[name] = None
        except (DistributedError, ValueError) as exc:
            errors[name] = (type(exc).__name__, str(exc))
    return out, errors


@pytest.mark.mpi(ranks=[2, 4])
def test_warns_on_sorted_slices_not_shuffled(mpi_ranks):
    per_rank = run_function(_shift_body, mpi_ranks)
    warnings_, errors = per_rank[0]
    assert warnings_["shuffled"] == []
    kinds = {w["kind"]: w for w in warnings_["sorted_x0"]}
    assert "column_means" in kinds and kinds["column_means"]["columns"][:1] == ["x0"]
    assert kinds["column_means"]["ranks"] == list(
        range(mpi_ranks)
    )  # every quantile slice is off-centre
    kinds = {w["kind"]: w for w in warnings_["sorted_label"]}
    assert "class_proportions" in kinds and "column_means" in kinds
    assert "total variation" in kinds["class_proportions"]["message"]

    # Every rank raised the same error, naming the rank where it happened.
    for other in per_rank[1:]:
        assert other[1] == errors
    assert (
        errors["text"][0] == "DistributedValueError"
        and f"rank {mpi_ranks - 1}" in errors["text"][1]
    )
    assert (
        errors["columns"][0] == "ValueError"
        and "different numbers of features" in errors["columns"][1]
    )
    assert "y must be 1-D" in errors["y_length"][1]
    assert (
        errors["quantiles_1d"][0] == "DistributedValueError"
        and "must be 2-D" in errors["quantiles_1d"][1]
    )
    assert f"rank {mpi_ranks - 1}" in errors["quantiles_1d"][1]
    assert "different numbers of columns" in errors["quantiles_columns"][1]


# ---------------------------------------------------------------- pure pieces (no MPI)


def test_column_stats_merge_equals_numpy_on_concatenation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)) + [0.0, 1e6, -3.0, 0.0]
    X[rng.random(X.shape) < 0.05] = np.nan
    X[[1, 2], 2] = [np.inf, -np.inf]
    X[:, 3] = np.nan
    X[:5, 3] = [1.0, 2.0, 3.0, 4.0, 5.0]  # few values, all in one part
    cuts = [(0, 0), (0, 5), (5, 90), (90, 90), (90, 333), (333, 600)]
    parts = [ColumnStats.of_block(X[a:b]) for a, b in cuts]
    # Any order and grouping of merges gives the same summary.
    left = reduce(ColumnStats.merge, parts)
    tree = (
        parts[5]
        .merge(parts[4])
        .merge(parts[0].merge(parts[3]).merge(parts[1].merge(parts[2])))
    )
    for pooled in (left, tree):
        assert (
            pooled.rows == 600
            and pooled.rows_with_missing == (~np.isfinite(X)).any(axis=1).sum()
        )
        for j in range(4):
            values = X[:, j][np.isfinite(X[:, j])]
            assert (
                pooled.count[j] == values.size
                and pooled.nan[j] == np.isnan(X[:, j]).sum()
            )
            assert (
                pooled.posinf[j] == (X[:, j] == np.inf).sum()
                and pooled.neginf[j] == (X[:, j] == -np.inf).sum()
            )
            np.testing.assert_allclose(pooled.mean[j], values.mean(), rtol=1e-14)
            np.testing.assert_allclose(pooled.std()[j], values.std(ddof=1), rtol=1e-9)
            np.testing.assert_allclose(
                pooled.m2[j], ((values - values.mean()) ** 2).sum(), rtol=1e-9
            )
            assert pooled.min[j] == values.min() and pooled.max[j] == values.max()
    # Unit spread around 1e6 survives (the naive formula would give noise or a negative variance).
    assert abs(left.std()[1] - 1) < 0.1
    again = ColumnStats.from_array(left.to_array())
    assert np.array_equal(again.to_array(), left.to_array()) and again.rows == left.rows


@pytest.mark.parametrize(
    "kind",
    ["normal", "cubed_exponential", "integers", "constant", "one_value", "outlier"],
)
def test_histogram_quantiles_within_guaranteed_bound(kind):
    rng = np.random.default_rng(1)
    values = {
        "normal": rng.normal(size=20000),
        "cubed_exponential": rng.exponential(size=20000) ** 3,
        "integers": rng.integers(-2, 3, size=20000).astype(float),
        "constant": np.full(50, 2.5),
        "one_value": np.array([-7.0]),
        "outlier": np.append(
            rng.normal(size=5000), 1e9
        ),  # one value stretches the bins
    }[kind]
    levels = np.linspace(0, 1, 201)
    column = values[:, None]
    lo, hi = column.min(axis=0), column.max(axis=0)
    hist = reduce(
        Histograms.merge,
        [Histograms.of_block(part, lo, hi, 256) for part in np.array_split(column, 4)],
    )
    assert hist.counts.sum() == values.size
    got, bound = histogram_quantiles(hist, levels)
    reference = np.quantile(values, levels)
    assert (np.abs(got[:, 0] - reference) <= bound[:, 0]).all()
    assert (bound <= (hi - lo) / 256 * (1 + 1e-9)).all()
    if kind in ("integers", "constant", "one_value"):
        # Few distinct values: every quantile falls on a bin's first or last value, so it is exact.
        assert np.array_equal(got[:, 0], reference) and (bound == 0).all()


def test_float_keys_sort_like_floats():
    rng = np.random.default_rng(2)
    special = [
        -np.inf,
        -1.7e308,
        -1.0,
        -5e-324,
        -0.0,
        0.0,
        5e-324,
        2.2e-308,
        1.0,
        1.7e308,
        np.inf,
    ]
    values = np.concatenate(
        [special, rng.normal(size=1000) * 10.0 ** rng.integers(-300, 300, size=1000)]
    )
    keys = float_keys(values)
    assert np.array_equal(np.sort(values), keys_to_floats(np.sort(keys)))
    assert float_keys(np.array([-0.0]))[0] == float_keys(np.array([0.0]))[0]
    roundtrip = keys_to_floats(keys)
    assert (
        np.array_equal(roundtrip, values)
        and not np.signbit(roundtrip[values == 0]).any()
    )


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_linear_quantiles_bit_identical_to_numpy(n):
    rng = np.random.default_rng(n)
    values = np.sort(rng.normal(size=n) * 1e3)
    levels = np.array([0.0, 0.001, 0.25, 1 / 3, 0.5, 0.75, 0.999, 1.0])
    assert np.array_equal(linear_quantiles(values, levels), np.quantile(values, levels))
    with_inf = np.sort(np.append(values, np.inf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.array_equal(
            linear_quantiles(with_inf, levels),
            np.quantile(with_inf, levels),
            equal_nan=True,
        )


def _pca_failure_body(comm, X, svd_solver="covariance_eigh"):
    """PCA of each rank's slice of ``X``: the agreed error's message on this rank."""
    from mpitrain.decomposition import PCA

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    try:
        PCA(svd_solver=svd_solver, comm=comm).fit(X[a:b])
    except Exception as exc:
        return str(exc)
    return None


@pytest.mark.mpi(ranks=[2, 3])
def test_pca_names_the_global_row_of_a_non_finite_value(mpi_ranks):
    n, bad = 157, 131  # on the last rank, far from its first row
    X = np.random.default_rng(5).normal(size=(n, 4))
    X[bad, 2] = np.nan
    owner = next(r for r in range(mpi_ranks) if bad < row_range(n, mpi_ranks, r)[1])
    for message in run_function(_pca_failure_body, mpi_ranks, X):
        assert message is not None
        assert f"failed on rank {owner} (of {mpi_ranks})" in message, message
        assert f"in 1 row(s) of a block, the first at row {bad}" in message, message
    # The exact alternative (tall-skinny QR) names it too, from its owner alone.
    for message in run_function(_pca_failure_body, mpi_ranks, X, "full"):
        assert f"failed on rank {owner} (of {mpi_ranks}):" in message, message
        assert f"in 1 row(s), the first at row {bad}" in message, message
    # Finite values whose column sum overflows: said so on every rank.
    X[bad, 2], X[bad - 1, 2] = 1e308, 1e308
    for message in run_function(_pca_failure_body, mpi_ranks, X, "full"):
        assert "values too large: the column sums overflow float64" in message


def test_cli_describe_pca_names_the_global_row_without_numpy_warnings(
    tmp_path, mpitrain_cli
):
    from mpitrain.testing import mpirun

    X = np.random.default_rng(6).normal(size=(400, 5))
    X[300, 1] = np.inf  # rank 1's row 100
    data = write_h5(tmp_path / "inf.h5", X)
    result = mpirun(2, [*mpitrain_cli, "describe", data, "--pca", "2"], timeout=400)
    assert result.returncode == 1, result.stderr
    assert "failed on rank 1 (of 2)" in result.stderr, result.stderr
    assert "the first at row 300" in result.stderr, result.stderr
    assert "RuntimeWarning" not in result.stderr, result.stderr
