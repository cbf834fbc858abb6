"""Many HDF5 files as one row space: layouts, compression, dtypes, patterns, the command line, memory checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import write_h5
from sklearn import linear_model

from mpitrain.data import (
    expand_paths,
    row_range,
    rows_memory_bytes,
    smallest_rank_count,
)
from mpitrain.errors import MpitrainError
from mpitrain.model_io import load_model
from mpitrain.testing import mpirun, run_function

# (rows, dtype of X, layout): every layout h5py writes, float32 and float64,
# an empty file, and chunks smaller than a block so blocks meet chunk edges.
MIXED = [
    (7, "f8", "gzip"),
    (0, "f8", "contiguous"),
    (5, "f4", "lzf"),
    (11, "f8", "chunked"),
    (6, "f4", "contiguous"),
    (9, "f4", "gzip"),
]


def write_parts(directory, specs, d=3, seed=0, prefix="part", labels=False):
    """Write one file per spec; return the paths and the concatenated X, y, w (float64)."""
    rng = np.random.default_rng(seed)
    paths, Xs, ys, ws = [], [], [], []
    for i, (n, dtype, layout) in enumerate(specs):
        X = rng.normal(size=(n, d)).astype(dtype)
        y = (
            rng.integers(0, 3, size=n)
            if labels
            else X.astype(np.float64) @ np.arange(1.0, d + 1) + rng.normal(size=n)
        )
        w = rng.uniform(0.5, 2.0, size=n)
        chunked = (
            {}
            if layout == "contiguous" or n == 0
            else {
                "chunks": True,
                "compression": None if layout == "chunked" else layout,
            }
        )
        path = directory / f"{prefix}-{i:02d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "X",
                data=X,
                **({**chunked, "chunks": (min(3, n), d)} if chunked else {}),
            )
            # The target's chunks differ from the features': blocks follow the features.
            f.create_dataset(
                "y", data=y, **({**chunked, "chunks": (min(4, n),)} if chunked else {})
            )
            f.create_dataset("w", data=w, **chunked)
        paths.append(str(path))
        Xs.append(X.astype(np.float64))
        ys.append(y)
        ws.append(w)
    return paths, np.concatenate(Xs), np.concatenate(ys), np.concatenate(ws)


def _read_body(comm, paths, block_bytes):
    """Stream the rows, then read them again into memory; return both."""
    from mpitrain.data import open_rows

    reader = open_rows(paths, sample_weight="w", comm=comm, block_bytes=block_bytes)
    blocks = [
        (b.start, b.stop, b.path, b.X.copy(), b.y.copy(), b.sample_weight.copy())
        for b in reader.stream()
    ]
    rows = open_rows(
        paths, sample_weight="w", comm=comm, block_bytes=block_bytes
    ).result()
    firsts = {s.path: (s.first_row, s.n_rows, s.chunk_rows) for s in reader.sources}
    return (
        reader.start,
        reader.stop,
        str(reader.x_dtype),
        blocks,
        (rows.X, rows.y, rows.sample_weight, rows.paths),
        firsts,
    )


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_files_read_as_one_row_space_whatever_the_layout(tmp_path, mpi_ranks):
    paths, X, y, w = write_parts(tmp_path, MIXED)
    n = len(X)
    # Blocks of two chunks: rank slices start and end inside chunks and files.
    parts = run_function(_read_body, mpi_ranks, paths, 2 * 3 * 3 * 8)
    assert [p[:2] for p in parts] == [
        row_range(n, mpi_ranks, r) for r in range(mpi_ranks)
    ]
    assert {p[2] for p in parts} == {"float64"}  # float32 and float64 files: float64
    blocks = [b for p in parts for b in p[3]]
    np.testing.assert_array_equal(np.concatenate([b[3] for b in blocks]), X)
    np.testing.assert_array_equal(np.concatenate([b[4] for b in blocks]), y)
    np.testing.assert_array_equal(np.concatenate([b[5] for b in blocks]), w)
    firsts = parts[0][5]
    for start, stop, path, *_ in blocks:
        first, rows, chunk = firsts[path]
        assert first <= start < stop <= first + rows  # a block never spans two files
        rank_stop = next(p[1] for p in parts if p[0] <= start < p[1])
        if chunk and stop not in (first + rows, rank_stop):
            assert (stop - first) % chunk == 0  # ends on the file's own chunk boundary
    # The same rows held in memory.
    np.testing.assert_array_equal(np.concatenate([p[4][0] for p in parts]), X)
    np.testing.assert_array_equal(np.concatenate([p[4][1] for p in parts]), y)
    np.testing.assert_array_equal(np.concatenate([p[4][2] for p in parts]), w)
    assert all(p[4][3] == tuple(paths) for p in parts)
    # Some rank's slice spans a file boundary.
    assert mpi_ranks == 1 or any(len({b[2] for b in p[3]}) > 1 for p in parts)


@pytest.mark.mpi(ranks=[4])
def test_ranks_without_rows_and_float32_files_staying_float32(tmp_path, mpi_ranks):
    paths, X, y, w = write_parts(tmp_path, [(2, "f4", "gzip"), (1, "f4", "contiguous")])
    parts = run_function(_read_body, mpi_ranks, paths, 1 << 20)
    assert [p[1] - p[0] for p in parts] == [
        row_range(3, mpi_ranks, r)[1] - row_range(3, mpi_ranks, r)[0]
        for r in range(mpi_ranks)
    ]
    assert all(p[2] == "float32" for p in parts)
    assert parts[3][3] == [] and parts[3][4][0].shape == (
        0,
        3,
    )  # an empty rank still takes part
    np.testing.assert_array_equal(
        np.concatenate([p[4][0] for p in parts]), X.astype(np.float32)
    )


def _labels_body(comm, paths):
    from mpitrain.data import read_rows

    rows = read_rows(paths, labels=True, comm=comm)
    return rows.y, str(rows.y.dtype)


def test_integer_labels_take_the_common_type(tmp_path):
    paths = []
    for i, dtype in enumerate(["int8", "int32"]):
        paths.append(
            write_h5(
                tmp_path / f"l{i}.h5",
                np.ones((3, 2)),
                np.array([1, 2, 3], dtype=dtype) * (i + 1),
            )
        )
    parts = run_function(_labels_body, 2, paths)
    assert {p[1] for p in parts} == {"int32"}
    np.testing.assert_array_equal(
        np.concatenate([p[0] for p in parts]), [1, 2, 3, 2, 4, 6]
    )


def test_expand_paths_sorts_each_pattern_and_keeps_the_list_order(tmp_path):
    for name in ("b-2.h5", "b-10.h5", "a.h5", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_paths(str(tmp_path / "b-*.h5")) == [
        str(tmp_path / "b-10.h5"),
        str(tmp_path / "b-2.h5"),
    ]
    assert expand_paths([tmp_path / "a.h5", str(tmp_path / "b-*.h5")]) == [
        str(tmp_path / "a.h5"),
        str(tmp_path / "b-10.h5"),
        str(tmp_path / "b-2.h5"),
    ]
    assert expand_paths(str(tmp_path / "missing.h5")) == [
        str(tmp_path / "missing.h5")
    ]  # reported when opened
    with pytest.raises(MpitrainError, match="no file matches the pattern"):
        expand_paths([str(tmp_path / "a.h5"), str(tmp_path / "z*.h5")])
    with pytest.raises(MpitrainError, match="named twice"):
        expand_paths([str(tmp_path / "a.h5"), str(tmp_path / "?.h5")])
    with pytest.raises(MpitrainError, match="no data files"):
        expand_paths([])


def _pattern_body(comm, pattern, listed):
    from mpitrain.data import read_rows

    by_pattern, by_list = read_rows(pattern, comm=comm), read_rows(listed, comm=comm)
    return by_pattern.paths == by_list.paths, by_pattern.X, by_list.X


def test_a_pattern_reads_its_matches_in_sorted_order(tmp_path):
    paths, X, _, _ = write_parts(
        tmp_path, [(4, "f8", "contiguous"), (3, "f8", "gzip"), (5, "f8", "lzf")]
    )
    parts = run_function(
        _pattern_body, 3, str(tmp_path / "part-*.h5"), list(reversed(paths))
    )
    assert not any(p[0] for p in parts)  # the list keeps its own order
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), X)
    np.testing.assert_array_equal(
        np.concatenate([p[2] for p in parts]), np.concatenate([X[7:], X[4:7], X[:4]])
    )


def _errors_body(comm, cases):
    from mpitrain.data import open_rows
    from mpitrain.errors import DistributedError

    messages = []
    for paths, labels, _ in cases:
        try:
            open_rows(paths, labels=labels, comm=comm)
            messages.append(None)
        except DistributedError as exc:
            messages.append(str(exc))
    return messages


def test_files_that_do_not_fit_together_are_refused_on_every_rank_naming_the_file(
    tmp_path,
):
    good = write_h5(tmp_path / "good.h5", np.ones((4, 3)), np.ones(4))
    wide = write_h5(tmp_path / "wide.h5", np.ones((4, 5)), np.ones(4))
    no_y = write_h5(tmp_path / "no_y.h5", np.ones((4, 3)))
    with h5py.File(tmp_path / "text.h5", "w") as f:
        f.create_dataset("X", data=np.ones((2, 3)))
        f.create_dataset("y", data=["a", "b"], dtype=h5py.string_dtype())
    cases = [
        (
            [good, wide],
            False,
            f"{wide}: feature dataset 'X' has 5 columns but {good} has 3",
        ),
        ([good, no_y], False, f"{no_y} has no dataset 'y'"),
        (
            [good, str(tmp_path / "gone.h5")],
            False,
            f"no such file: {tmp_path / 'gone.h5'}",
        ),
        (
            [good, str(tmp_path / "text.h5")],
            True,
            "target dataset 'y' holds text but in",
        ),
        ([good, str(tmp_path / "nothing-*.h5")], False, "no file matches the pattern"),
    ]
    per_rank = run_function(_errors_body, 3, cases)
    for (_, _, message), messages in zip(cases, zip(*per_rank)):
        assert messages[0] is not None and len(set(messages)) == 1, (
            messages
        )  # the same on every rank
        assert "failed on all 3 ranks" in messages[0] and message in messages[0], (
            messages[0]
        )


# --------------------------------------------------------------------------
# The command line


def _train(ranks, cli, data, *extra, env=None):
    """The real command when ``cli`` is given, else the same entry point in the
    shared job (tests/cli_in_job.py)."""
    if cli is None:
        return cli_in_job(ranks, ["train", *data, *extra], env=env, timeout=120)
    return mpirun(ranks, [*cli, "train", *data, *extra], timeout=120, env=env)


@pytest.mark.mpi(ranks=[3])
def test_train_on_a_pattern_equals_scikit_learn_on_all_files(tmp_path, mpi_ranks):
    paths, X, y, w = write_parts(tmp_path, MIXED)
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    # In the shared job; a pattern through the real command is the test below.
    run = _train(
        mpi_ranks,
        None,
        [str(tmp_path / "part-*.h5")],
        "--model",
        "ridge",
        "--alpha",
        "0.5",
        "--sample-weight",
        "w",
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert run.returncode == 0, run.stderr
    ref = linear_model.Ridge(alpha=0.5).fit(X, y, sample_weight=w)
    model = load_model(out)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=1e-8)
    rep = json.loads(report.read_text())
    assert rep["data"] == paths and rep["rows"] == len(X)


def test_train_on_several_files_and_patterns_in_memory(tmp_path):
    paths, X, y, _ = write_parts(tmp_path, MIXED, labels=True)
    out = tmp_path / "m.skops"
    # A plain file first, then a pattern: rows in that order.  In the shared job.
    run = _train(
        3,
        None,
        [paths[3], str(tmp_path / "part-0[0-2].h5")],
        "--model",
        "logistic",
        "--out",
        str(out),
        "--quiet",
    )
    assert run.returncode == 0, run.stderr
    order = np.concatenate(
        [
            np.arange(sum(s[0] for s in MIXED[:3]), sum(s[0] for s in MIXED[:4])),
            np.arange(sum(s[0] for s in MIXED[:3])),
        ]
    )
    ref = linear_model.LogisticRegression().fit(X[order], y[order])
    model = load_model(out)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-4, atol=1e-5)


def test_a_pattern_matching_nothing_is_a_clear_error_printed_once(
    tmp_path, mpitrain_cli
):
    run = _train(
        2,
        mpitrain_cli,
        [str(tmp_path / "nothing-*.h5")],
        "--model",
        "ridge",
        "--out",
        str(tmp_path / "m.skops"),
    )
    assert not run.timed_out and run.returncode == 1
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("mpitrain: error")
    ]
    assert (
        len(errors) == 1
        and "no file matches the pattern" in errors[0]
        and "nothing-*.h5" in errors[0]
    )
    assert not (tmp_path / "m.skops").exists()


def test_train_streams_many_files_in_bounded_memory(tmp_path, mpitrain_cli):
    # 2 x 120 MB of rows: streamed, the peak grows by the ring of blocks, not the data.
    rng = np.random.default_rng(2)
    block = rng.normal(size=(50_000, 60))
    big = []
    for i in range(2):
        path = tmp_path / f"big-{i}.h5"
        with h5py.File(path, "w") as f:
            X = f.create_dataset(
                "X", shape=(250_000, 60), dtype="f8", chunks=(8192, 60)
            )
            for a in range(0, 250_000, 50_000):
                X[a : a + 50_000] = block
            f.create_dataset("y", data=block[:, 0].repeat(5))
        big.append(str(path))
    small = write_h5(tmp_path / "small.h5", block[:1000], block[:1000, 0])
    peaks = []
    for data in ([small], [str(tmp_path / "big-*.h5")]):
        report = tmp_path / "r.json"
        run = _train(
            1,
            mpitrain_cli,
            data,
            "--model",
            "linear",
            "--out",
            str(tmp_path / "m.skops"),
            "--report",
            str(report),
            "--quiet",
        )
        assert run.returncode == 0, run.stderr
        rep = json.loads(report.read_text())
        peaks.append(rep["peak_memory_bytes_per_rank"][0])
    assert rep["rows"] == 500_000
    assert peaks[1] - peaks[0] < 150e6, (
        f"peak {peaks[0] / 1e6:.0f} MB for 1,000 rows, "
        f"{peaks[1] / 1e6:.0f} MB for 240 MB"
    )


# --------------------------------------------------------------------------
# Memory checks before reading, for models that hold their rows


def test_in_memory_model_that_cannot_fit_fails_before_reading(tmp_path):
    paths, X, y, _ = write_parts(
        tmp_path, [(400, "f4", "gzip"), (300, "f8", "contiguous")], d=9, labels=True
    )
    limit = (200 << 20) + 60_000  # the kernel cache (200 MiB) fits; the rows do not
    run = _train(  # in the shared job: the limit is read when the command checks
        2,
        None,
        [str(tmp_path / "part-*.h5")],
        "--model",
        "svc",
        "--out",
        str(tmp_path / "m.skops"),
        env={"MPITRAIN_MEMORY_LIMIT": str(limit)},
    )
    assert not run.timed_out and run.returncode == 1, run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("mpitrain: error")
    ]
    assert len(errors) == 1, run.stderr
    need = rows_memory_bytes(350, 9, copies=4, fixed_bytes=200 << 20)
    assert need > limit
    fewest = smallest_rank_count(
        700, rows_memory_bytes(1, 9, copies=4), 200 << 20, limit
    )
    assert (
        "failed on all 2 ranks" in errors[0] and "--model svc needs about" in errors[0]
    )
    assert (
        "MPITRAIN_MEMORY_LIMIT" in errors[0] and f"at least {fewest} ranks" in errors[0]
    ), errors[0]
    assert "read " not in run.stderr  # nothing was read
    assert not (tmp_path / "m.skops").exists()


def _check_fit_body(comm, paths, limits, copies, fixed_bytes):
    import os

    from mpitrain.data import check_rows_fit, open_rows
    from mpitrain.errors import DistributedMemoryError

    reader = open_rows(paths, comm=comm)
    messages = []
    for limit in limits:
        os.environ["MPITRAIN_MEMORY_LIMIT"] = str(limit[comm.Get_rank()])
        try:
            check_rows_fit(
                reader, comm, copies=copies, fixed_bytes=fixed_bytes, what="the test"
            )
            messages.append(None)
        except DistributedMemoryError as exc:
            messages.append(str(exc))
    return messages, reader.buffer_bytes


def test_memory_check_names_need_limit_ranks_and_agrees(tmp_path):
    paths, *_ = write_parts(
        tmp_path, [(51, "f8", "contiguous"), (50, "f4", "gzip")], d=4
    )
    share = rows_memory_bytes(
        34, 4, copies=2, fixed_bytes=1000
    )  # 101 rows on 3 ranks: at most 34 each
    limits = [
        [share] * 3,  # fits exactly
        [share - 1] * 3,  # short by a byte everywhere
        [share, share, share - 1],  # only rank 2 is short
        [999] * 3,
    ]  # not even the fixed part fits
    per_rank, buffers = zip(*run_function(_check_fit_body, 3, paths, limits, 2.0, 1000))
    fits, everywhere, one, none = zip(*per_rank)
    assert fits == (None, None, None)
    assert len(set(everywhere)) == 1 and "the test needs about" in everywhere[0]
    fewest = smallest_rank_count(
        101, rows_memory_bytes(1, 4, copies=2), 1000, share - 1
    )
    assert (
        fewest == 4
        and "failed on all 3 ranks" in everywhere[0]
        and "at least 4 ranks" in everywhere[0]
    )
    assert len(set(one)) == 1 and "failed on rank 2 (of 3)" in one[0]
    assert (
        len(set(none)) == 1
        and "no number of ranks fits: the fixed part alone exceeds the limit" in none[0]
    )
    assert buffers == (0, 0, 0)  # checked before anything was read
