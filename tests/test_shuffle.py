"""mpitrain shuffle and train --shuffle: a seeded permutation of the rows, whatever the rank count."""

from __future__ import annotations

import glob
import json
import os

import h5py
import numpy as np
import pytest
from conftest import write_h5

from mpitrain.data import part_name, permute_rows, row_range
from mpitrain.errors import UsageError
from mpitrain.testing import mpirun, run_function

DATASETS = ("X", "y", "w", "carrier", "extra/pair", "row_id")


def write_sorted(directory, n=157, d=3, seed=0, files=2):
    """A data set sorted by its label, over ``files`` files, with weights, text and a 2-D extra."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sort(rng.integers(0, 3, size=n))  # sorted: slices of the input differ
    w = rng.uniform(0.5, 2.0, size=n)
    carrier = np.array([f"c{i % 7}-{i}" for i in range(n)], dtype=object)
    pair = np.column_stack([np.arange(n), -np.arange(n)])
    cuts = np.linspace(0, n, files + 1).astype(int)
    paths = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        path = os.path.join(directory, f"in-{i}.h5")
        with h5py.File(path, "w") as f:
            f["X"] = X[a:b]
            f["y"] = y[a:b]
            f["w"] = w[a:b]
            f.create_dataset("carrier", data=carrier[a:b], dtype=h5py.string_dtype())
            f["extra/pair"] = pair[a:b]
        paths.append(path)
    return paths, {"X": X, "y": y, "w": w, "carrier": carrier, "extra/pair": pair}


def read_parts(directory):
    """Every dataset of the parts, concatenated in name order, and the rows per part."""
    parts = sorted(glob.glob(os.path.join(directory, "*.h5")))
    out, sizes = {}, []
    for path in parts:
        with h5py.File(path, "r") as f:
            sizes.append(f["X"].shape[0])
            for name in DATASETS:
                ds = f[name]
                value = ds.asstr()[:] if name == "carrier" else ds[:]
                out.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in out.items()}, sizes, parts


def _shuffle_body(comm, paths, out, seed, memory_limit=None):
    """shuffle_files at this rank count; optionally under a tiny memory limit."""
    from mpitrain.data import shuffle_files

    saved = os.environ.get("MPITRAIN_MEMORY_LIMIT")
    lines = []
    try:
        if memory_limit is not None:
            os.environ["MPITRAIN_MEMORY_LIMIT"] = str(memory_limit)
        manifest = shuffle_files(
            paths, out, seed=seed, sample_weight="w", comm=comm, log=lines.append
        )
    finally:
        if saved is None:
            os.environ.pop("MPITRAIN_MEMORY_LIMIT", None)
        else:
            os.environ["MPITRAIN_MEMORY_LIMIT"] = saved
    return manifest, lines


def test_permute_rows_is_a_seeded_bijection():
    for n in (0, 1, 2, 3, 5, 64, 65, 1000, 4097):
        positions = permute_rows(np.arange(n), n, seed=7)
        np.testing.assert_array_equal(np.sort(positions), np.arange(n))
    a = permute_rows(np.arange(10_000), 10_000, seed=1)
    b = permute_rows(np.arange(10_000), 10_000, seed=2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, permute_rows(np.arange(10_000), 10_000, seed=1))
    # Mixed, not a shift or a stride: no correlation between a row and its place.
    assert abs(np.corrcoef(np.arange(10_000), a)[0, 1]) < 0.05
    # Any subset of rows gets the same places as in the whole (what ranks rely on).
    np.testing.assert_array_equal(
        permute_rows(np.arange(300, 400), 10_000, seed=1), a[300:400]
    )
    with pytest.raises(TypeError):
        permute_rows(np.arange(3), 3, seed=1.5)


def test_parts_are_the_same_at_1_2_3_ranks_and_keep_every_row(tmp_path):
    paths, rows = write_sorted(tmp_path)
    n = len(rows["y"])
    results = {}
    for ranks in (1, 2, 3):
        out = tmp_path / f"out{ranks}"
        if ranks < 3:
            out.mkdir()
        else:  # shuffle_files makes a missing folder (and its parents)
            out = out / "made"
        ((manifest, lines), *_) = run_function(
            _shuffle_body, ranks, paths, str(out), 11
        )
        got, sizes, parts = read_parts(out)
        assert [os.path.basename(p) for p in parts] == manifest["files"]
        assert sizes == [
            b - a for a, b in (row_range(n, ranks, r) for r in range(ranks))
        ]
        assert manifest["rows_per_part"] == sizes and manifest["seed"] == 11
        assert set(os.listdir(out)) == {*manifest["files"], "shuffle.json"}
        results[ranks] = got
    got = results[1]
    # row_id maps every row back to the input, each input row exactly once.
    np.testing.assert_array_equal(np.sort(got["row_id"]), np.arange(n))
    for name, value in rows.items():
        np.testing.assert_array_equal(got[name], value[got["row_id"]])
    # The same rows in the same order at every rank count.
    for ranks in (2, 3):
        for name in DATASETS:
            np.testing.assert_array_equal(results[ranks][name], got[name])
    # Really moved: the input is sorted by label, the first half of the output is not.
    assert not np.array_equal(got["row_id"], np.arange(n))
    first = got["y"][: n // 2]
    assert len(np.unique(first)) == 3


def test_a_part_larger_than_memory_is_filled_in_passes_alike(tmp_path):
    paths, rows = write_sorted(tmp_path, n=211)
    whole, tight = tmp_path / "whole", tmp_path / "tight"
    whole.mkdir()
    tight.mkdir()
    run_function(_shuffle_body, 2, paths, str(whole), 3)
    ((_, lines), _) = run_function(
        _shuffle_body, 2, paths, str(tight), 3, memory_limit=6000
    )
    assert any("passes of" in line for line in lines), lines
    assert sum("written" in line for line in lines) > 2
    a, _, _ = read_parts(whole)
    b, _, _ = read_parts(tight)
    for name in DATASETS:
        np.testing.assert_array_equal(a[name], b[name])


def _read_parts_body(comm, pattern):
    from mpitrain.data import read_rows

    rows = read_rows(pattern, sample_weight="w", comm=comm)
    return rows.start, rows.stop, rows.X, rows.y


@pytest.mark.mpi(ranks=[3])
def test_parts_read_back_as_one_data_set_with_a_rank_without_rows(tmp_path, mpi_ranks):
    paths, rows = write_sorted(tmp_path, n=2, files=1)
    out = tmp_path / "out"
    out.mkdir()
    run_function(_shuffle_body, mpi_ranks, paths, str(out), 0)
    got, sizes, _ = read_parts(out)
    assert sizes == [1, 1, 0]
    np.testing.assert_array_equal(got["X"], rows["X"][got["row_id"]])
    slices = run_function(_read_parts_body, mpi_ranks, str(out / "*.h5"))
    for (start, stop, X, _), size in zip(slices, sizes):
        assert stop - start == size
        np.testing.assert_array_equal(X, got["X"][start:stop])


@pytest.mark.mpi(ranks=[2])
def test_slices_of_the_parts_are_alike(tmp_path, mpi_ranks):
    paths, rows = write_sorted(tmp_path, n=600)
    out = tmp_path / "out"
    out.mkdir()
    run_function(_shuffle_body, mpi_ranks, paths, str(out), 5)
    slices = run_function(_read_parts_body, mpi_ranks, [str(out / "*.h5")])
    overall = np.bincount(rows["y"], minlength=3) / len(rows["y"])
    for _, _, _, y in slices:
        share = np.bincount(y, minlength=3) / len(y)
        assert np.abs(share - overall).max() < 0.08, (share, overall)
    # The input's own slices are not alike (sorted by label).
    first = rows["y"][:300]
    assert np.abs(np.bincount(first, minlength=3) / 300 - overall).max() > 0.2


def _failing_body(comm, paths, out):
    """Creating the part fails on rank 1 only: an agreed error, nothing published."""
    from mpitrain.data import _shuffle, shuffle_files

    real = _shuffle._create_part

    def broken(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if comm.Get_rank() == 1:
            raise OSError("disk full (injected)")

    _shuffle._create_part = broken
    try:
        shuffle_files(paths, out, seed=1, sample_weight="w", comm=comm)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    finally:
        _shuffle._create_part = real
    return None


@pytest.mark.mpi(ranks=[2])
def test_a_failed_write_publishes_nothing_and_keeps_the_old_parts(tmp_path, mpi_ranks):
    paths, _ = write_sorted(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    run_function(_shuffle_body, mpi_ranks, paths, str(out), 0)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    results = run_function(_failing_body, mpi_ranks, paths, str(out))
    for kind, message in results:
        assert kind.startswith("Distributed"), (
            kind
        )  # the same agreed error on every rank
        assert "disk full (injected)" in message and "rank 1" in message, message
    # The earlier complete shuffle is untouched, and no temporary file is left.
    after = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert after == before


def test_another_rank_count_replaces_the_parts(tmp_path):
    paths, rows = write_sorted(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    run_function(_shuffle_body, 3, paths, str(out), 4)
    ((manifest, _), _) = run_function(_shuffle_body, 2, paths, str(out), 4)
    assert sorted(os.listdir(out)) == sorted([*manifest["files"], "shuffle.json"])
    assert len(manifest["removed_stale_parts"]) == 3
    got, _, _ = read_parts(out)
    np.testing.assert_array_equal(got["X"], rows["X"][got["row_id"]])


def _train_pair_body(comm, paths, out, model_dir):
    """train --shuffle on the input, and train on the parts: both models' numbers."""
    from mpitrain.data import shuffle_files
    from mpitrain.workflow import predict, train

    shuffle_files(paths, out, seed=9, sample_weight="w", comm=comm)
    common = dict(
        model="logistic",
        strategy="average",
        sample_weight="w",
        test_size=0.2,
        comm=comm,
        quiet=True,
    )
    shuffled = train(paths, out=f"{model_dir}/a.skops", shuffle=9, **common)
    parts = train(f"{out}/*.h5", out=f"{model_dir}/b.skops", **common)
    plain = train(paths, out=f"{model_dir}/c.skops", **common)
    predict(
        f"{model_dir}/b.skops",
        f"{out}/*.h5",
        out=f"{model_dir}/original.h5",
        original_order=True,
        comm=comm,
        quiet=True,
    )
    predict(
        f"{model_dir}/b.skops",
        f"{out}/*.h5",
        out=f"{model_dir}/parts.h5",
        comm=comm,
        quiet=True,
    )
    report = shuffled.report or {}  # rank 0's
    return [
        (m.model.coef_.copy(), m.model.intercept_.copy())
        for m in (shuffled, parts, plain)
    ] + [(report.get("shuffle"), sorted(report.get("seconds", {})))]


@pytest.mark.mpi(ranks=[2])
def test_train_shuffle_equals_training_on_the_parts_and_predict_maps_back(
    tmp_path, mpi_ranks
):
    from mpitrain.model_io import load_model

    paths, rows = write_sorted(tmp_path, n=400, files=2)
    out = tmp_path / "out"
    out.mkdir()
    ((shuffled, parts, plain, (said, phases)), _) = run_function(
        _train_pair_body, mpi_ranks, paths, str(out), str(tmp_path)
    )
    assert said == {"seed": 9} and "shuffle" in phases  # the run report says so
    for a, b in zip(shuffled, parts):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(shuffled[0], plain[0])  # the shuffle changed the slices
    model = load_model(str(tmp_path / "b.skops"))
    expected = model.predict(rows["X"])  # scikit-learn on the input, in its order
    with h5py.File(tmp_path / "original.h5") as f:
        assert set(f) == {"prediction"}
        np.testing.assert_array_equal(f["prediction"][:], expected)
    with h5py.File(tmp_path / "parts.h5") as f:
        row_id = f["row_id"][:]
        np.testing.assert_array_equal(f["prediction"][:], expected[row_id])


def test_shuffle_is_refused_for_models_that_learn_from_sums():
    from mpitrain.workflow import TrainOptions

    with pytest.raises(UsageError, match="--shuffle"):
        TrainOptions(data="d.h5", model="ridge", out="m.skops", shuffle=0)
    TrainOptions(data="d.h5", model="ridge", strategy="average", out="m", shuffle=0)


def test_cli_refuses_a_folder_holding_the_input_and_writes_nothing(
    tmp_path, mpitrain_cli
):
    paths, _ = write_sorted(tmp_path, files=1)
    before = sorted(os.listdir(tmp_path))
    result = mpirun(
        2, [*mpitrain_cli, "shuffle", paths[0], "--out", str(tmp_path)], timeout=400
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("holds the input DATA") == 1, result.stderr
    assert sorted(os.listdir(tmp_path)) == before
    out = tmp_path / "parts"
    result = mpirun(
        2,
        [*mpitrain_cli, "shuffle", paths[0], "--out", str(out), "--seed", "2"],
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "shuffle.json").read_text())
    assert manifest["parts"] == 2 and manifest["seed"] == 2
    assert manifest["files"] == ["part-0-of-2.h5", "part-1-of-2.h5"]


def _in_memory_body(comm, X, labels):
    """shuffle_rows in small rounds, then move_rows with positions that collide."""
    from mpitrain.data import move_rows, shuffle_rows

    n = len(X)
    a, b = row_range(n, comm.Get_size(), comm.Get_rank())
    moved, lo, hi = shuffle_rows(
        {"X": X[a:b], "y": labels[a:b], "w": None},
        a,
        n,
        seed=4,
        comm=comm,
        block_bytes=100,  # a few rows per round: several rounds
    )
    try:
        move_rows({"X": X[a:b]}, np.zeros(b - a, dtype=np.int64), n, comm=comm)
        error = None
    except Exception as exc:
        error = (type(exc).__name__, str(exc))
    return lo, hi, moved["X"], moved["y"], moved["w"], moved["row_id"], error


@pytest.mark.mpi(ranks=[2, 3])
def test_rows_in_memory_move_to_their_places_with_text_labels(mpi_ranks):
    n = 23
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    labels = np.array(
        [f"label-{i % 4}-{'x' * (i % 5)}" for i in range(n)], dtype=object
    )
    # Position j of the output holds the input row that permute_rows sends to j.
    source = np.argsort(permute_rows(np.arange(n), n, seed=4))
    results = run_function(_in_memory_body, mpi_ranks, X, labels)
    for rank, (lo, hi, X_r, y_r, w_r, row_id, error) in enumerate(results):
        assert (lo, hi) == row_range(n, mpi_ranks, rank)
        np.testing.assert_array_equal(row_id, source[lo:hi])
        np.testing.assert_array_equal(X_r, X[source[lo:hi]])
        assert list(y_r) == list(labels[source[lo:hi]])
        assert w_r is None
        assert error is not None and "not 0 .. 22 each once" in error[1], error
        # Every row sent to position 0: rank 0 got them all, the others none.
        assert "came twice" in error[1] and "came never" in error[1], error


def test_positions_computed_ahead_equal_permute_rows_of_each_block():
    from mpitrain.data._shuffle import _PositionsAhead

    n, start, stop = 10_007, 1_234, 9_876
    ahead = _PositionsAhead(n, seed=3, stop=stop, chunk=1_000)
    bounds = [start, 1_300, 2_234, 2_235, 2_235, 4_900, 9_000, stop]  # across chunks
    for a, b in zip(bounds, bounds[1:]):
        rows = np.arange(a, b, dtype=np.int64)
        np.testing.assert_array_equal(ahead.positions(rows), permute_rows(rows, n, 3))


def test_cli_removes_the_folder_it_made_when_the_shuffle_fails(tmp_path, mpitrain_cli):
    X = np.random.default_rng(0).normal(size=(40, 3))
    data = write_h5(tmp_path / "ylen.h5", X, np.zeros(30))  # y shorter than X
    made = tmp_path / "new" / "parts"  # its parent is made too
    result = mpirun(
        2, [*mpitrain_cli, "shuffle", data, "--out", str(made)], timeout=400
    )
    assert result.returncode == 1, result.stderr
    assert "has 30 rows but the features have 40" in result.stderr, result.stderr
    assert not (tmp_path / "new").exists()
    # A folder that existed before the command is never removed, even empty.
    existing = tmp_path / "existing"
    existing.mkdir()
    result = mpirun(
        2, [*mpitrain_cli, "shuffle", data, "--out", str(existing)], timeout=400
    )
    assert result.returncode == 1, result.stderr
    assert existing.is_dir() and not os.listdir(existing)


def test_cli_names_a_folder_holding_many_inputs_once(tmp_path, mpitrain_cli):
    X = np.random.default_rng(0).normal(size=(40, 3))
    for rank in range(3):  # the parts of an earlier shuffle, shuffled into their folder
        write_h5(tmp_path / part_name(rank, 3), X, np.zeros(40))
    before = sorted(os.listdir(tmp_path))
    pattern = str(tmp_path / "*.h5")
    result = mpirun(
        2, [*mpitrain_cli, "shuffle", pattern, "--out", str(tmp_path)], timeout=400
    )
    assert result.returncode == 1, result.stderr
    first = tmp_path / part_name(0, 3)
    assert result.stderr.count("holds the input DATA") == 1, result.stderr
    assert f"holds the input DATA {first} and 2 more input files:" in result.stderr
    assert sorted(os.listdir(tmp_path)) == before
