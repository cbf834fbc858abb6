"""Row partitioning, reading rows from HDF5, and make-data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import write_h5
from mpitrain.data import make_data, row_counts, row_range
from mpitrain.testing import mpirun, run_function


@pytest.mark.parametrize("n_rows", [0, 1, 2, 5, 7, 100, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_row_range_covers_rows_once_balanced(n_rows, size):
    ranges = [row_range(n_rows, size, r) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c  # contiguous, in rank order
    counts = [b - a for a, b in ranges]
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # leftovers to the lowest ranks
    assert counts == list(row_counts(n_rows, size))


def test_row_range_rejects_bad_rank():
    with pytest.raises(ValueError):
        row_range(10, 2, 2)
    with pytest.raises(ValueError):
        row_range(-1, 2, 0)


def _read_body(comm, path, sample_weight):
    from mpitrain.data import read_rows

    rows = read_rows(path, sample_weight=sample_weight, comm=comm)
    return rows.start, rows.stop, rows.X, rows.y, rows.sample_weight


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_read_rows_concatenate_to_the_file(tmp_path, mpi_ranks):
    rng = np.random.default_rng(1)
    X, y, w = rng.normal(size=(11, 3)), rng.normal(size=11), rng.uniform(size=11)
    path = write_h5(tmp_path / "d.h5", X, y, w=w)
    parts = run_function(_read_body, mpi_ranks, path, "w")
    assert [p[0] for p in parts] == [row_range(11, mpi_ranks, r)[0] for r in range(mpi_ranks)]
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), X)
    np.testing.assert_array_equal(np.concatenate([p[3] for p in parts]), y)
    np.testing.assert_array_equal(np.concatenate([p[4] for p in parts]), w)


def test_read_rows_more_ranks_than_rows_and_float32(tmp_path):
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = write_h5(tmp_path / "d.h5", X, np.array([1, 2], dtype=np.int32))
    parts = run_function(_read_body, 3, path, None)
    assert [p[2].shape for p in parts] == [(1, 3), (1, 3), (0, 3)]
    assert all(p[2].dtype == np.float32 for p in parts)  # float32 stays float32
    assert all(p[3].dtype == np.int32 for p in parts)  # integer labels keep their type
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), X)


def test_make_data_is_reproducible_whatever_the_ranks(tmp_path, mpitrain_cli):
    files = []
    for ranks in (1, 3):
        out = tmp_path / f"r{ranks}.h5"
        run = mpirun(ranks, [*mpitrain_cli, "make-data", "classification", str(out), "--rows", "70000",
                             "--features", "4", "--classes", "3", "--seed", "7", "--quiet"])
        assert run.returncode == 0, run.stderr
        files.append(out)
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b:
        np.testing.assert_array_equal(a["X"][:], b["X"][:])
        np.testing.assert_array_equal(a["y"][:], b["y"][:])
        assert a["X"].chunks is not None  # chunked, as promised
        assert set(np.unique(a["y"][:])) == {0, 1, 2}
    # A different seed gives different data.
    make_data("classification", tmp_path / "other.h5", rows=100, features=4, classes=3, seed=8)
    with h5py.File(files[0]) as a, h5py.File(tmp_path / "other.h5") as b:
        assert not np.array_equal(a["X"][:100], b["X"][:])


def test_make_data_regression_follows_its_model(tmp_path):
    meta = make_data("regression", tmp_path / "r.h5", rows=5000, features=6, informative=3, noise=0.5,
                     seed=3, dtype="float32")
    with h5py.File(tmp_path / "r.h5") as f:
        X, y = f["X"][:], f["y"][:]
        assert f["X"].dtype == np.float32
    assert np.count_nonzero(meta["coef"]) == 3
    resid = y - (X.astype(np.float64) @ meta["coef"] + meta["intercept"])
    assert abs(resid.std() - 0.5) < 0.05


def _peak_rss_mb_writing(path, rows):
    import json
    import subprocess
    import sys

    code = (
        "import resource, json; from mpitrain.data import make_data; "
        f"make_data('regression', {str(path)!r}, rows={rows}, features=50); "
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout) / 1024


def test_make_data_memory_is_bounded(tmp_path):
    # Writing 7.5 times the rows must not need more memory: peak RSS does not grow with the file.
    small = _peak_rss_mb_writing(tmp_path / "small.h5", 200_000)
    big = _peak_rss_mb_writing(tmp_path / "big.h5", 1_500_000)
    assert (tmp_path / "big.h5").stat().st_size > 600e6
    assert big - small < 40, f"peak RSS {small:.0f} MB for 80 MB of data, {big:.0f} MB for 600 MB"
    assert big < 400


def test_make_data_leaves_no_partial_file(tmp_path):
    with pytest.raises(Exception):
        make_data("regression", tmp_path / "x.h5", rows=10, features=2, informative=5)
    with pytest.raises(Exception):
        make_data("regression", tmp_path / "missing-dir" / "x.h5", rows=10, features=2)
    assert list(tmp_path.iterdir()) == []


def test_make_data_interrupted_midway_leaves_nothing(tmp_path):
    good = tmp_path / "x.h5"
    make_data("regression", good, rows=10, features=2)
    before = good.read_bytes()

    def fail(done):
        raise KeyboardInterrupt("killed midway")

    with pytest.raises(KeyboardInterrupt):
        make_data("regression", good, rows=200_000, features=2, seed=5, progress=fail)
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]  # no temporary file left
    assert good.read_bytes() == before  # the older good file survives


def _blocks_body(comm, path):
    from mpitrain.data import open_rows

    reader = open_rows(path, sample_weight="w", comm=comm, block_bytes=200)
    blocks = list(reader.blocks())
    return reader.start, blocks, reader.X.copy(), reader.y.copy(), reader.block_rows


@pytest.mark.mpi(ranks=[1, 3, 4])
def test_blocks_follow_the_file_chunks_and_cover_every_row(tmp_path, mpi_ranks):
    rng = np.random.default_rng(3)
    X, y, w = rng.normal(size=(103, 3)).astype(np.float32), rng.normal(size=103), rng.uniform(size=103)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, chunks=(4, 3))
        f.create_dataset("y", data=y, chunks=(10,))
        f.create_dataset("w", data=w)
    parts = run_function(_blocks_body, mpi_ranks, str(path))
    for start, blocks, X_local, y_local, block_rows in parts:
        assert block_rows == 16  # 200 bytes of float32 rows of 3, rounded down to whole chunks of 4
        assert [a for a, _ in blocks[1:]] == [b for _, b in blocks[:-1]]  # contiguous
        if blocks:
            assert all((start + b) % block_rows == 0 for _, b in blocks[:-1])  # chunk-aligned ends
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), X)
    np.testing.assert_array_equal(np.concatenate([p[3] for p in parts]), y)


def _labels_body(comm, path):
    from mpitrain.data import read_rows
    from mpitrain.errors import DistributedError

    rows = read_rows(path, labels=True, comm=comm)
    try:
        read_rows(path, comm=comm)  # a regression target must be numeric
    except DistributedError as exc:
        return list(rows.y), str(exc)


@pytest.mark.mpi(ranks=[1, 3])
def test_text_labels_are_read_as_str_when_asked(tmp_path, mpi_ranks):
    labels = ["cat", "dog", "émeu", "dog", "cat"]
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.ones((5, 2)))
        f.create_dataset("y", data=labels, dtype=h5py.string_dtype())
    parts = run_function(_labels_body, mpi_ranks, str(path))
    assert sum((p[0] for p in parts), []) == labels
    assert "dataset '/y' has dtype object; it must be numeric" in parts[0][1]
