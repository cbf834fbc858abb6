"""Row partitioning, reading rows from HDF5, and make-data."""

from __future__ import annotations

import json
import os
import stat

import h5py
import numpy as np
import pytest
from conftest import write_h5

from mpitrain.data import row_counts, row_range
from mpitrain.datasets import make_data
from mpitrain.errors import MpitrainError
from mpitrain.testing import run_function


@pytest.mark.parametrize("n_rows", [0, 1, 2, 5, 7, 100, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_row_range_covers_rows_once_balanced(n_rows, size):
    ranges = [row_range(n_rows, size, r) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    for (_a, b), (c, _) in zip(ranges, ranges[1:]):
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


def _balanced(n_rows, size, rank):
    """The partition before the root share: the reference for ``root_share=1``."""
    base, extra = divmod(n_rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@pytest.mark.parametrize("n_rows", [0, 1, 2, 3, 5, 7, 100, 101, 4_000_001])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8, 64])
@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.89, 0.999, 1.0])
def test_root_share_partition_covers_rows_once_in_rank_order(n_rows, size, share):
    ranges = [row_range(n_rows, size, r, share) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    for (_a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c  # contiguous, in rank order
    counts = [b - a for a, b in ranges]
    assert min(counts) >= 0 and sum(counts) == n_rows
    assert counts == list(row_counts(n_rows, size, share))
    others = counts[1:]
    if others:
        assert max(others) - min(others) <= 1  # the others stay balanced
        assert others == sorted(others, reverse=True)
        # Rank 0 holds `share` times the others' mean, rounded up by less than one row (x (1 + s/(P-1))).
        excess = counts[0] - share * (n_rows - counts[0]) / (size - 1)
        assert 0 <= excess < 1 + share / (size - 1)
    else:
        assert counts == [n_rows]  # alone, rank 0 reads everything whatever the share
    if share == 1.0:  # bit for bit the balanced partition of before
        assert ranges == [_balanced(n_rows, size, r) for r in range(size)]
    if share == 0.0 and size > 1:
        assert counts[0] == 0  # the root reads nothing


def test_root_share_edge_cases():
    assert list(row_counts(0, 4, 0.5)) == [0, 0, 0, 0]
    assert list(row_counts(2, 4, 0.5)) == [1, 1, 0, 0]  # fewer rows than ranks
    assert list(row_counts(2, 4, 0.0)) == [0, 1, 1, 0]
    assert list(row_counts(7, 1, 0.0)) == [7]
    assert list(row_counts(10, 3, 0.5)) == [2, 4, 4]
    assert list(row_counts(4_000_000, 2, 0.89)) == [1_883_598, 2_116_402]


@pytest.mark.parametrize(
    "share", [-0.1, 1.5, float("nan"), float("inf"), "0.5", None, True, [0.5]]
)
def test_bad_root_share_is_refused_with_a_clear_error(share):
    with pytest.raises(ValueError, match="root_share must be a number from 0 to 1"):
        row_range(10, 2, 0, share)
    with pytest.raises(ValueError, match="root_share must be a number from 0 to 1"):
        row_counts(10, 2, share)


def _read_with_root_share_body(comm, path):
    from mpitrain.data import open_rows, read_rows

    rows = read_rows(path, comm=comm, root_share=0.25)
    seen = []
    # A share from the agreed metadata: called with the rows and the features.
    reader = open_rows(
        path, comm=comm, root_share=lambda n, d: seen.append((n, d)) or 0.0
    )
    reader.close()
    return (
        rows.start,
        rows.stop,
        rows.X,
        (reader.start, reader.stop, reader.root_share, reader.largest_share),
        seen,
    )


@pytest.mark.mpi(ranks=[1, 3])
def test_read_rows_with_a_root_share(tmp_path, mpi_ranks):
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(23, 3)), rng.normal(size=23)
    path = write_h5(tmp_path / "d.h5", X, y)
    parts = run_function(_read_with_root_share_body, mpi_ranks, path)
    expected = [row_range(23, mpi_ranks, r, 0.25) for r in range(mpi_ranks)]
    assert [p[:2] for p in parts] == expected
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), X)
    zero = [row_range(23, mpi_ranks, r, 0.0) for r in range(mpi_ranks)]
    largest = max(b - a for a, b in zero)
    assert [p[3] for p in parts] == [(*z, 0.0, largest) for z in zero]
    assert all(p[4] == [(23, 3)] for p in parts)


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
    assert [p[0] for p in parts] == [
        row_range(11, mpi_ranks, r)[0] for r in range(mpi_ranks)
    ]
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


def test_make_data_is_reproducible_whatever_the_ranks(tmp_path):
    from cli_in_job import cli_in_job

    files = []
    for ranks in (1, 3):
        out = tmp_path / f"r{ranks}.h5"
        # The command's entry point in the shared job (tests/cli_in_job.py):
        # make-data is launched for real in test_cli.py.
        run = cli_in_job(
            ranks,
            [
                "make-data",
                "classification",
                str(out),
                "--rows",
                "70000",
                "--features",
                "4",
                "--classes",
                "3",
                "--seed",
                "7",
                "--quiet",
            ],
        )
        assert run.returncode == 0, run.stderr
        files.append(out)
    with h5py.File(files[0]) as a, h5py.File(files[1]) as b:
        np.testing.assert_array_equal(a["X"][:], b["X"][:])
        np.testing.assert_array_equal(a["y"][:], b["y"][:])
        assert a["X"].chunks is not None  # chunked, as promised
        assert set(np.unique(a["y"][:])) == {0, 1, 2}
    # A different seed gives different data.
    make_data(
        "classification", tmp_path / "other.h5", rows=100, features=4, classes=3, seed=8
    )
    with h5py.File(files[0]) as a, h5py.File(tmp_path / "other.h5") as b:
        assert not np.array_equal(a["X"][:100], b["X"][:])


def test_make_data_regression_follows_its_model(tmp_path):
    meta = make_data(
        "regression",
        tmp_path / "r.h5",
        rows=5000,
        features=6,
        informative=3,
        noise=0.5,
        seed=3,
        dtype="float32",
    )
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

    # The peak of this process's own memory map (VmHWM, kB): ru_maxrss would
    # also count the pages the child shared with pytest between fork and
    # exec, so it grew with whatever the pytest process held (442 MB in CI).
    code = (
        "import json, re; from mpitrain.datasets import make_data; "
        f"make_data('regression', {str(path)!r}, rows={rows}, features=50); "
        "status = open('/proc/self/status').read(); "
        "print(json.dumps(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout) / 1024


@pytest.mark.slow
def test_make_data_memory_is_bounded(tmp_path):
    # Writing 7.5 times the rows must not need more memory: peak RSS does not grow with the file.
    small = _peak_rss_mb_writing(tmp_path / "small.h5", 200_000)
    big = _peak_rss_mb_writing(tmp_path / "big.h5", 1_500_000)
    assert (tmp_path / "big.h5").stat().st_size > 600e6
    assert big - small < 40, (
        f"peak RSS {small:.0f} MB for 80 MB of data, {big:.0f} MB for 600 MB"
    )
    assert big < 400


def test_make_data_leaves_no_partial_file(tmp_path):
    with pytest.raises(MpitrainError):
        make_data("regression", tmp_path / "x.h5", rows=10, features=2, informative=5)
    with pytest.raises(MpitrainError, match="does not exist"):
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
    X, y, w = (
        rng.normal(size=(103, 3)).astype(np.float32),
        rng.normal(size=103),
        rng.uniform(size=103),
    )
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, chunks=(4, 3))
        f.create_dataset("y", data=y, chunks=(10,))
        f.create_dataset("w", data=w)
    parts = run_function(_blocks_body, mpi_ranks, str(path))
    for start, blocks, _X_local, _y_local, block_rows in parts:
        assert (
            block_rows == 16
        )  # 200 bytes of float32 rows of 3, rounded down to whole chunks of 4
        assert [a for a, _ in blocks[1:]] == [b for _, b in blocks[:-1]]  # contiguous
        if blocks:
            assert all(
                (start + b) % block_rows == 0 for _, b in blocks[:-1]
            )  # chunk-aligned ends
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


# --------------------------------------------------------------------------
# Block plans, the streamed ring, and the memory estimate of in-memory models


def _check_plan(sources, start, stop, row_bytes, block_bytes):
    from mpitrain.data import plan_blocks
    from mpitrain.data._hdf5 import _block_layout

    plan = plan_blocks(sources, start, stop, row_bytes, block_bytes)
    covered = [
        sources[b.source].first_row + r
        for b in plan
        for r in range(b.file_start, b.file_stop)
    ]
    assert covered == list(range(start, stop))  # every row once, in order
    assert [b.offset for b in plan] == [
        sources[b.source].first_row + b.file_start - start for b in plan
    ]
    for b in plan:
        source = sources[b.source]
        assert (
            0 <= b.file_start < b.file_stop <= source.n_rows
        )  # never across a file boundary
        block, _ = _block_layout(source.chunk_rows, row_bytes, block_bytes)
        assert b.n_rows <= block
        piece_stop = min(stop, source.first_row + source.n_rows) - source.first_row
        if source.chunk_rows and b.file_stop != piece_stop:
            if source.chunk_rows <= block:
                assert b.file_stop % block == 0  # whole chunks
            else:
                # Equal parts of a chunk: a block never holds rows of two chunks.
                assert (b.file_start // source.chunk_rows) == (
                    (b.file_stop - 1) // source.chunk_rows
                )
    return plan


@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 7, 10, 50])
@pytest.mark.parametrize("block_bytes", [1, 80, 200, 10_000])
def test_plan_covers_every_row_once_aligned_with_chunks(chunk_rows, block_bytes):
    from mpitrain.data import SourceFile

    sizes = [13, 0, 29, 1, 40]
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sources = [
        SourceFile(f"f{i}.h5", int(first), n, chunk_rows)
        for i, (first, n) in enumerate(zip(firsts, sizes))
    ]
    total = sum(sizes)
    for size in (1, 2, 3, 4, 7):
        for rank in range(size):
            _check_plan(
                sources,
                *row_range(total, size, rank),
                row_bytes=8,
                block_bytes=block_bytes,
            )
    assert (
        _check_plan(sources, 5, 5, 8, block_bytes) == []
    )  # a rank without rows reads nothing


def test_chunks_larger_than_a_block_are_cut_into_equal_parts():
    from mpitrain.data import SourceFile, plan_blocks
    from mpitrain.data._hdf5 import _block_layout

    assert _block_layout(10, 8, 4 * 8) == (
        4,
        10,
    )  # three blocks of 4, 4, 2 rows per chunk of 10
    assert _block_layout(3, 8, 10 * 8) == (9, 9)  # three whole chunks per block
    assert _block_layout(None, 8, 10 * 8) == (10, 10)
    plan = plan_blocks([SourceFile("a.h5", 0, 25, 10)], 0, 25, 8, 4 * 8)
    assert [(b.file_start, b.file_stop) for b in plan] == [
        (0, 4),
        (4, 8),
        (8, 10),
        (10, 14),
        (14, 18),
        (18, 20),
        (20, 24),
        (24, 25),
    ]


def _stream_body(comm, path, keep_rows, block_bytes, slow):
    import time

    from mpitrain.data import open_rows

    reader = open_rows(
        path, sample_weight="w", comm=comm, block_bytes=block_bytes
    ).begin(keep_rows=keep_rows)
    seen = []
    for block in reader.stream():
        if slow:
            time.sleep(0.01)  # the reader runs ahead until the ring is full
        seen.append(
            (block.start, block.X.copy(), block.y.copy(), block.sample_weight.copy())
        )
    return reader.start, reader.stop, seen, reader.buffer_bytes, len(reader._ring)


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_streamed_blocks_reuse_a_bounded_ring_and_give_every_row(tmp_path, mpi_ranks):
    rng = np.random.default_rng(4)
    X, y, w = rng.normal(size=(57, 3)), rng.normal(size=57), rng.uniform(size=57)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, chunks=(2, 3))
        f.create_dataset("y", data=y, chunks=(5,), compression="gzip")
        f.create_dataset("w", data=w)
    for keep_rows, slow in ((False, True), (False, False), (True, False)):
        parts = run_function(
            _stream_body, mpi_ranks, str(path), keep_rows, 4 * 24, slow
        )
        for _start, _stop, seen, buffer_bytes, ring in parts:
            assert [s[0] for s in seen] == sorted(s[0] for s in seen) and all(
                len(s[1]) <= 4 for s in seen
            )
            if not keep_rows:
                assert ring == min(3, len(seen))  # the ring, not the slice
                assert buffer_bytes <= 3 * 4 * (3 + 1 + 1) * 8
        np.testing.assert_array_equal(
            np.concatenate([s[1] for p in parts for s in p[2]]), X
        )
        np.testing.assert_array_equal(
            np.concatenate([s[2] for p in parts for s in p[2]]), y
        )
        np.testing.assert_array_equal(
            np.concatenate([s[3] for p in parts for s in p[2]]), w
        )


def _peak_growth_body(comm, path, keep_rows):
    import resource

    from mpitrain.data import open_rows
    from mpitrain.stats import StatisticsAccumulator

    reader = open_rows(path, comm=comm, block_bytes=4 << 20)
    stats = StatisticsAccumulator(reader.n_features, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for block in reader.begin(keep_rows=keep_rows).stream():
        stats.add(block.X, block.y[:, None])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return after - before, stats.result().count


@pytest.mark.slow
@pytest.mark.mpi_own_job  # measures the process's peak memory: a fresh process
def test_streamed_read_memory_does_not_grow_with_the_rows(tmp_path):
    # 120 MB of rows streamed in 4 MB blocks: the peak grows by the ring, not the data.
    rows, d = 250_000, 60
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    block = rng.normal(size=(50_000, d))
    with h5py.File(path, "w") as f:
        X = f.create_dataset("X", shape=(rows, d), dtype="f8", chunks=(8192, d))
        for a in range(0, rows, 50_000):
            X[a : a + 50_000] = block
        f.create_dataset("y", data=np.ones(rows))
    streamed, count = run_function(_peak_growth_body, 1, str(path), False)[0]
    kept, _ = run_function(_peak_growth_body, 1, str(path), True)[0]
    assert count == rows
    assert streamed < 60e6, f"streaming 120 MB grew the peak by {streamed / 1e6:.0f} MB"
    assert kept > 110e6  # the measurement sees memory: keeping the rows does grow it


def _misuse_body(comm, path):
    from mpitrain.data import open_rows

    outcomes = []
    reader = open_rows(path, sample_weight="w", comm=comm).begin(keep_rows=False)
    for call in (
        reader.result,
        lambda: list(reader.blocks()),
        lambda: reader.begin(keep_rows=True),
    ):
        try:
            call()
        except RuntimeError as exc:
            outcomes.append(str(exc))
    list(reader.stream())
    try:
        list(reader.stream())
    except RuntimeError as exc:
        outcomes.append(str(exc))
    # A consumer that stops early and closes does not hang the reading thread.
    early = open_rows(path, sample_weight="w", comm=comm, block_bytes=16).begin(
        keep_rows=False
    )
    next(iter(early.stream()))
    early.close()
    return outcomes


def test_streamed_reader_refuses_in_memory_use_and_a_second_pass(tmp_path):
    path = write_h5(tmp_path / "d.h5", np.ones((40, 2)), np.ones(40), w=np.ones(40))
    outcomes = run_function(_misuse_body, 1, path)[0]
    assert len(outcomes) == 4
    assert (
        all("streamed" in m for m in outcomes[:2]) and "keep_rows=False" in outcomes[2]
    )
    assert "streamed once only" in outcomes[3]


def _bad_weight_stream_body(comm, path):
    from mpitrain.comm import collective_check
    from mpitrain.data import open_rows
    from mpitrain.errors import DistributedError

    reader = open_rows(path, sample_weight="w", comm=comm, block_bytes=16)
    try:
        with collective_check(comm, "streaming"):
            for _ in reader.stream():
                pass
    except DistributedError as exc:
        return str(exc)
    finally:
        reader.close()


def test_a_bad_weight_found_while_streaming_is_agreed(tmp_path):
    w = np.ones(30)
    w[25] = np.inf
    path = write_h5(tmp_path / "d.h5", np.ones((30, 2)), np.ones(30), w=w)
    messages = run_function(_bad_weight_stream_body, 3, path)
    assert messages[0] == messages[1] == messages[2]
    assert "failed on rank 2 (of 3)" in messages[0] and "row 25 is not" in messages[0]


@pytest.mark.parametrize("n_rows", [0, 1, 10, 1001, 10**6 + 3])
@pytest.mark.parametrize(
    "row_bytes,fixed,limit",
    [(80, 0, 8000), (80, 5000, 8000), (24, 0, 100), (80, 9000, 8000), (1000, 0, 999)],
)
def test_smallest_rank_count_is_the_fewest_ranks_that_fit(
    n_rows, row_bytes, fixed, limit
):
    from mpitrain.data import smallest_rank_count

    def fits(size):
        return -(-n_rows // size) * row_bytes + fixed <= limit

    fewest = smallest_rank_count(n_rows, row_bytes, fixed, limit)
    if fewest is None:
        assert not fits(max(n_rows, 1))  # even one row per rank does not fit
    else:
        assert fits(fewest) and (fewest == 1 or not fits(fewest - 1))


def test_rows_memory_bytes_counts_features_target_weights_and_copies():
    from mpitrain.data import rows_memory_bytes

    assert rows_memory_bytes(1000, 9) == 1000 * 8 * 10
    assert (
        rows_memory_bytes(1000, 9, weights=True, copies=3, fixed_bytes=7)
        == 1000 * 8 * 11 * 3 + 7
    )
    assert rows_memory_bytes(0, 9, copies=4, fixed_bytes=100) == 100


def test_compressed_chunks_shared_by_several_blocks_stay_cached(tmp_path):
    # A target chunk of 16 MB (beyond HDF5's default cache) read by many feature
    # blocks, and feature chunks larger than a block: without a cache that
    # holds them, every block would decompress the whole chunk again.
    from mpitrain.data import RowReader, SourceFile
    from mpitrain.data._hdf5 import _open

    rows = 2_000_000
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "X",
            data=np.zeros((rows, 1), dtype=np.float32),
            chunks=(rows // 2, 1),
            compression="gzip",
        )
        f.create_dataset("y", data=np.zeros(rows), chunks=(rows,), compression="lzf")
        f.create_dataset(
            "w", data=np.ones(rows), chunks=(rows // 4,)
        )  # uncompressed: read in place
    source = SourceFile(str(path), 0, rows, rows // 2, True)
    reader = RowReader(
        [source],
        {"x": "X", "y": "y", "sample_weight": "w"},
        0,
        rows,
        1,
        np.float32,
        np.float64,
        block_bytes=1 << 20,
    )
    assert reader.block_rows < rows // 2  # several blocks per feature chunk
    with _open(str(path)) as f:
        caches = {
            role: ds.id.get_access_plist().get_chunk_cache()[1]
            for role, ds in reader._columns(f, source)
        }
    assert caches["y"] >= 2 * rows * 8 and caches["X"] >= rows // 2 * 4
    # Uncompressed chunks skip the cache (a cached chunk costs a copy per read).
    assert caches["sample_weight"] == 0
    aligned = RowReader(
        [source],
        {"x": "X", "y": None, "sample_weight": None},
        0,
        rows,
        1,
        np.float32,
        None,
        block_bytes=64 << 20,
    )
    with _open(str(path)) as f:
        ((_, X),) = aligned._columns(f, source)
        assert (
            X.id.get_access_plist().get_chunk_cache()[1] == 0
        )  # blocks of whole chunks: each read once


# --------------------------------------------------------------------------
# Durable atomic writes, and temporary files of killed writers


def _record_fsyncs(monkeypatch):
    """Patch os.fsync to record, in order, which paths were synced and renamed."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_write_syncs_the_file_then_renames_then_syncs_the_directory(
    tmp_path, monkeypatch
):
    from mpitrain.data import atomic_path

    events = _record_fsyncs(monkeypatch)
    final = tmp_path / "model.bin"
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"weights")
    assert final.read_bytes() == b"weights"
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"], events
    assert events[0][1] == events[1][1] == tmp  # the data reached the disk first
    assert events[1][2] == str(final)
    assert events[2][1] == str(tmp_path)  # then the rename itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_private_atomic_write_is_never_readable_by_others(tmp_path):
    """A private temporary file is 0600 from its creation on, whatever the umask:
    nobody can open it while it is empty and keep reading what is written later."""
    from mpitrain.data import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "rows.bin", private=True) as tmp:
            assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600
            with open(tmp, "wb") as f:
                f.write(b"rows")
        with atomic_path(tmp_path / "plain.bin") as tmp:
            assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o644
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "rows.bin").st_mode) == 0o600
    assert (tmp_path / "rows.bin").read_bytes() == b"rows"


def test_checkpoint_files_go_through_the_same_durable_write(tmp_path, monkeypatch):
    from mpitrain.checkpoint import _write_atomically, read_checkpoint

    events = _record_fsyncs(monkeypatch)
    content = {
        "format": "mpitrain-checkpoint",
        "version": 1,
        "fingerprint": {"data": "d.h5"},
        "loops": {},
    }
    _write_atomically(str(tmp_path / "ck.npz"), content)
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"], events
    assert read_checkpoint(tmp_path / "ck.npz") == content


def _ordered_write_fsyncs_body(comm, path):
    import os

    from mpitrain.data import write_rows_in_order

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    os.fsync = fsync
    try:
        rows = np.arange(3 * (comm.Get_rank() + 1), dtype=np.float64).reshape(-1, 1)
        write_rows_in_order(path, {"p": rows}, comm=comm)
    finally:
        os.fsync = real
    return synced


def test_rows_written_in_order_are_synced_by_every_writer_before_the_rename(
    tmp_path,
):
    path = tmp_path / "pred.h5"
    synced = run_function(_ordered_write_fsyncs_body, 2, str(path))
    for rank, paths in enumerate(synced):
        temporary = [p for p in paths if os.path.basename(p).startswith(".pred.h5.")]
        assert len(temporary) >= 1, (rank, paths)  # its own rows, before the rename
    assert str(tmp_path) in synced[0]  # rank 0 also syncs the rename
    with h5py.File(path) as f:
        assert f["p"].shape == (9, 1)


def _temporary_name(final, host=None, pid=None):
    """A temporary file name as a writer on ``host`` (default: this one) makes it."""
    from mpitrain.data._write import _host_tag

    host = _host_tag() if host is None else host
    return final.parent / f".{final.name}.{host}.{pid}.abcd1234.tmp"


def _dead_pid():
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_killed_writers_are_swept_live_ones_never(tmp_path):
    import subprocess
    import time

    from mpitrain.data import STALE_TEMPORARY_SECONDS, write_json

    final = tmp_path / "report.json"
    old = time.time() - 2 * STALE_TEMPORARY_SECONDS
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead, young = _dead_pid(), _dead_pid()
        files = {
            "killed": _temporary_name(final, pid=dead),
            "killed but recent": _temporary_name(final, pid=young),
            "live writer": _temporary_name(final, pid=live.pid),
            "this process": _temporary_name(final, pid=os.getpid()),
            "another host": _temporary_name(final, host="elsewhere-node", pid=dead),
            "another file": tmp_path / f".report.json.bak.x.{dead}.abcd1234.tmp",
        }
        for name, path in files.items():
            path.write_text("partial")
            if name != "killed but recent":
                os.utime(path, (old, old))
        write_json(final, {"a": 1})
        left = {name for name, path in files.items() if path.exists()}
    finally:
        live.kill()
        live.wait()
    assert left == set(files) - {"killed"}
    assert json.loads(final.read_text()) == {"a": 1}


def test_report_json_is_strict_whatever_the_numbers(tmp_path):
    from mpitrain.data import write_json

    payload = {
        "auc": float("nan"),
        "statistics": np.array([1.5, np.nan, np.inf]),  # an all-missing column's mean
        "scalar": np.float64(-np.inf),
        "nested": [{"x": (np.nan, 2)}, np.array([[np.nan]], dtype=np.float32)],
        "ok": [np.int64(3), True, None, "text"],
    }
    write_json(tmp_path / "r.json", payload)

    def refuse(constant):
        raise ValueError(constant)

    parsed = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert parsed == {
        "auc": None,
        "statistics": [1.5, None, None],
        "scalar": None,
        "nested": [{"x": [None, 2]}, [[None]]],
        "ok": [3, True, None, "text"],
    }


# --------------------------------------------------------------------------
# What a dataset really reads: links, virtual datasets, unwritten chunks, chunk sizes


def _read_or_error_body(comm, path, kwargs):
    from mpitrain.comm import collective_check
    from mpitrain.data import open_rows
    from mpitrain.errors import MpitrainError

    reader = None
    try:
        reader = open_rows(path, comm=comm, **kwargs)
        with collective_check(comm, "reading"):
            rows = reader.result()
    except MpitrainError as exc:
        return "error", str(exc)
    finally:
        if reader is not None:
            reader.close()
    return "rows", rows.X, rows.y


def _read_all(path, ranks=2, **kwargs):
    """Every rank's rows concatenated, or the error (the same on every rank)."""
    outcomes = run_function(_read_or_error_body, ranks, str(path), kwargs)
    kinds = {o[0] for o in outcomes}
    assert len(kinds) == 1, outcomes
    if kinds == {"error"}:
        messages = {o[1] for o in outcomes}
        assert len(messages) == 1, messages  # agreed: the same on every rank
        return messages.pop()
    return np.concatenate([o[1] for o in outcomes]), np.concatenate(
        [o[2] for o in outcomes]
    )


def test_external_links_are_refused_unless_allowed(tmp_path):
    X, y = np.arange(12.0).reshape(6, 2), np.arange(6.0)
    other = tmp_path / "other"
    other.mkdir()
    write_h5(other / "target.h5", X)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = h5py.ExternalLink(str(other / "target.h5"), "/X")
        f["y"] = y
        f["group_link"] = h5py.ExternalLink(str(other / "target.h5"), "/")
        f["soft"] = h5py.SoftLink("/group_link/X")  # leaves the file through it
    message = _read_all(tmp_path / "d.h5")
    assert "external link ('/X' -> " in message and "target.h5" in message
    assert "through an external link" in _read_all(tmp_path / "d.h5", x="soft")
    X_read, y_read = _read_all(tmp_path / "d.h5", external_files=True)
    np.testing.assert_array_equal(X_read, X)
    np.testing.assert_array_equal(y_read, y)


def test_soft_links_inside_the_file_are_followed_and_loops_refused(tmp_path):
    X, y = np.arange(12.0).reshape(6, 2), np.arange(6.0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data/features"] = X
        f["y"] = y
        f["X"] = h5py.SoftLink("/data/features")
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.SoftLink("/a")
        f["dangling"] = h5py.SoftLink("/nowhere")
    np.testing.assert_array_equal(_read_all(tmp_path / "d.h5")[0], X)
    assert "form a loop" in _read_all(tmp_path / "d.h5", x="a")
    assert "has no dataset 'dangling'" in _read_all(tmp_path / "d.h5", x="dangling")


def _virtual_file(path, parts, shape, names):
    layout = h5py.VirtualLayout(shape=shape, dtype="f8")
    for (a, b), name in zip(parts, names):
        layout[a:b] = h5py.VirtualSource(name, "X", shape=(b - a, *shape[1:]))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("X", layout, fillvalue=-1)
        f["y"] = np.arange(float(shape[0]))


def test_virtual_datasets_read_their_sources_only_where_allowed(tmp_path):
    from mpitrain.data import fingerprint_files

    X = np.arange(20.0).reshape(10, 2)
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "parts").mkdir(parents=True)
    outside.mkdir()
    write_h5(data / "parts" / "a.h5", X[:4])
    write_h5(data / "parts" / "b.h5", X[4:])
    write_h5(outside / "b.h5", X[4:])
    # Relative source names are found beside the virtual file.
    ok = data / "ok.h5"
    _virtual_file(ok, [(0, 4), (4, 10)], X.shape, ["parts/a.h5", "parts/b.h5"])
    np.testing.assert_array_equal(_read_all(ok)[0], X)
    short = data / "short.h5"
    _virtual_file(short, [(0, 4), (4, 10)], X.shape, ["parts/a.h5", "parts/a.h5"])
    # The second mapping wants 6 rows of a 4-row source: 2 rows of fill values.
    assert "has 8 values (shape (4, 2)) but fills 12" in _read_all(short)
    far = data / "far.h5"
    _virtual_file(
        far, [(0, 4), (4, 10)], X.shape, ["parts/a.h5", str(outside / "b.h5")]
    )
    message = _read_all(far)
    assert "outside the input's directory" in message, message
    assert str(outside / "b.h5") in message
    np.testing.assert_array_equal(_read_all(far, external_files=True)[0], X)
    gap = data / "gap.h5"
    _virtual_file(gap, [(0, 4)], X.shape, ["parts/a.h5"])
    assert "cover 8 of its 20 values" in _read_all(gap)
    wrong = data / "wrong.h5"
    layout = h5py.VirtualLayout(shape=(4, 2), dtype="f8")
    layout[:] = h5py.VirtualSource("parts/a.h5", "Z", shape=(4, 2))
    with h5py.File(wrong, "w") as f:
        f.create_virtual_dataset("X", layout)
        f["y"] = np.zeros(4)
    assert "has no dataset 'Z'" in _read_all(wrong)
    files = fingerprint_files(str(far), ["X", "y"])
    assert [f["path"] for f in files] == [
        str(far.resolve()),
        str((data / "parts" / "a.h5").resolve()),
        str((outside / "b.h5").resolve()),
    ]
    assert files[0]["via"] is None and files[1]["via"] == f"{far}:X"
    assert all(f["size"] > 0 and f["mtime_ns"] > 0 for f in files)


def test_fingerprint_follows_external_links_and_calls_the_digest_hook(tmp_path):
    from mpitrain.data import fingerprint_files

    write_h5(tmp_path / "target.h5", np.ones((3, 2)))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = h5py.ExternalLink("target.h5", "/X")
        f["y"] = np.ones(3)
    seen = []
    files = fingerprint_files(
        [str(tmp_path / "d.h5"), str(tmp_path / "missing.h5")],
        ["X", "y", None],
        digest=lambda p: seen.append(p) or f"digest of {os.path.basename(p)}",
    )
    target = str((tmp_path / "target.h5").resolve())
    assert [f["path"] for f in files] == [
        str((tmp_path / "d.h5").resolve()),
        target,
        str((tmp_path / "missing.h5").resolve()),
    ]
    assert files[1]["digest"] == "digest of target.h5" and target in seen
    assert files[2]["size"] is None and files[2]["digest"] is None
    # Rewriting the linked file changes the fingerprint, though d.h5 is untouched.
    write_h5(tmp_path / "target.h5", np.zeros((4, 2)))
    again = fingerprint_files(str(tmp_path / "d.h5"), ["X"])
    assert again[0] == {**files[0], "digest": None}
    assert again[1]["size"] != files[1]["size"] or (
        again[1]["mtime_ns"] != files[1]["mtime_ns"]
    )


def test_unwritten_storage_is_refused_unless_it_reads_as_nan(tmp_path):
    X = np.arange(40.0).reshape(20, 2)
    with h5py.File(tmp_path / "zero.h5", "w") as f:
        ds = f.create_dataset("X", shape=X.shape, dtype="f8", chunks=(5, 2))
        ds[:5], ds[15:] = X[:5], X[15:]
        f["y"] = np.arange(20.0)
        f.create_dataset("w", shape=(20,), dtype="f8")  # contiguous, never written
    message = _read_all(tmp_path / "zero.h5")
    assert "2 of its 4 chunks were never written (rows 5-14)" in message
    assert "fill value 0.0" in message
    with h5py.File(tmp_path / "zero.h5", "a") as f:
        f["X"][5:15] = X[5:15]
    np.testing.assert_array_equal(_read_all(tmp_path / "zero.h5")[0], X)
    assert "its storage was never written" in _read_all(
        tmp_path / "zero.h5", sample_weight="w"
    )
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        ds = f.create_dataset(
            "X", shape=X.shape, dtype="f8", chunks=(5, 2), fillvalue=np.nan
        )
        ds[:5] = X[:5]
        f["y"] = np.arange(20.0)
    read = _read_all(tmp_path / "nan.h5")[0]
    np.testing.assert_array_equal(read[:5], X[:5])
    assert np.isnan(read[5:]).all()  # missing values, which the checks downstream see


def test_declared_shapes_that_nothing_backs_are_refused(tmp_path):
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset(
            "X",
            shape=(10**12, 1000),
            dtype="f8",
            chunks=(1000, 100),
            compression="gzip",
            fillvalue=np.nan,  # even where unwritten rows would read as missing
        )
        f["X"][:1000] = 1.0
        f.create_dataset("y", shape=(10**12,), dtype="f8", fillvalue=np.nan)
    message = _read_all(tmp_path / "huge.h5")
    assert "declares shape (1000000000000, 1000)" in message
    assert "9,999,999,990 of its 10,000,000,000 chunks were never written" in message


def test_chunks_that_decompress_beyond_the_limit_are_refused_with_advice(tmp_path):
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset(
            "X", data=np.zeros((4000, 4)), chunks=(4000, 4), compression="gzip"
        )
        f["y"] = np.zeros(4000)
    message = _read_all(tmp_path / "big.h5", max_chunk_bytes=100_000)
    assert "one compressed chunk (4000x4) decompresses to 128.0 kB" in message
    assert "h5repack -l X:CHUNK=4000x4" in message
    with h5py.File(tmp_path / "columns.h5", "w") as f:
        f.create_dataset(
            "X", data=np.zeros((4000, 8)), chunks=(4000, 1), compression="gzip"
        )
        f["y"] = np.zeros(4000)
    # One chunk (32 kB) fits; the band of 8 that every block needs does not.
    assert len(_read_all(tmp_path / "columns.h5", max_chunk_bytes=100_000)[0]) == 4000
    message = _read_all(
        tmp_path / "columns.h5", max_chunk_bytes=100_000, block_bytes=8000
    )
    assert "form row bands of 256.0 kB across the columns" in message, message
    assert "h5repack -l X:CHUNK=4000x8" in message


def test_column_chunks_are_cached_as_a_band_so_each_is_decompressed_once(tmp_path):
    rows, d = 4000, 8
    with h5py.File(tmp_path / "columns.h5", "w") as f:
        f.create_dataset(
            "X", data=np.ones((rows, d)), chunks=(rows, 1), compression="gzip"
        )
    reader = run_function(_column_cache_body, 1, str(tmp_path / "columns.h5"))[0]
    chunk = rows * 8
    assert reader["block_rows"] < rows  # blocks cut the chunks
    assert reader["cache_bytes"] >= d * chunk  # every column's chunk stays cached
    assert reader["held_bytes"] == d * chunk


def _column_cache_body(comm, path):
    from mpitrain.data import open_rows
    from mpitrain.data._hdf5 import _open

    reader = open_rows(path, y=None, comm=comm, block_bytes=64_000)
    with _open(path) as f:
        ((_, X),) = reader._columns(f, reader.sources[0])
        cache = X.id.get_access_plist().get_chunk_cache()[1]
    blocks = [b.X.copy() for b in reader.stream()]
    assert np.concatenate(blocks).sum() == 4000 * 8
    return {
        "block_rows": reader.block_rows,
        "cache_bytes": cache,
        "held_bytes": reader.sources[0].held_bytes,
    }
