"""Outputs never destroy inputs; outputs are checked before any work; resume is tied to options and contents.

Issue 12, items 2 and 8 and the first of 11.  Every command that writes
refuses, before reading a row, an output that is an input, two outputs that
are one file and an output that cannot be written, with one message on
every rank (:mod:`mpitrain.workflow._paths`).  A checkpoint records every
option that changes the result and the data's contents (a strided sample
digest): another seed, another imputation, or data rewritten with the same
shape and time, are refused on resume.
"""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import regression_problem, write_h5

from mpitrain.testing import mpirun, run_function
from mpitrain.workflow._paths import Named, path_problems

TIMEOUT = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", "120"))


# ----------------------------------------------------------------------------
# The pure check (no MPI)


def test_path_problems_names_both_paths_and_options(tmp_path):
    data = tmp_path / "d.h5"
    data.write_bytes(b"rows")
    (tmp_path / "link.h5").symlink_to(data)
    os.link(data, tmp_path / "hard.h5")
    (tmp_path / "afile").write_bytes(b"")
    inputs = [Named("DATA", str(data))]

    def problems(*outputs):
        return path_problems(inputs, list(outputs))

    assert problems(Named("--out", str(tmp_path / "m.skops"))) == []
    assert problems(Named("--out", None), Named("--plots", None, folder=True)) == []
    # An output that is an input: by name, through a symbolic or a hard link.
    for name in ("d.h5", "link.h5", "hard.h5"):
        (text,) = problems(Named("--out", str(tmp_path / name)))
        assert f"--out {tmp_path / name}" in text and f"DATA {data}" in text
        assert "would destroy it" in text
    # Two outputs that are one file, even before it exists.
    (text,) = problems(
        Named("--out", str(tmp_path / "m")), Named("--checkpoint", str(tmp_path / "m"))
    )
    assert "--out" in text and "--checkpoint" in text and "are the same file" in text
    # Directories that do not exist, or cannot (a path component is a file).
    (text,) = problems(Named("--report", str(tmp_path / "no" / "r.json")))
    assert f"the directory {tmp_path / 'no'} does not exist" in text
    (text,) = problems(Named("--out", str(tmp_path / "afile" / "m.skops")))
    assert f"{tmp_path / 'afile'} is not a directory" in text
    (text,) = problems(Named("--out", str(tmp_path)))
    assert "is a directory; name a file" in text
    # The plots folder: made with its parents if missing, never over a file.
    assert problems(Named("--plots", str(tmp_path / "p" / "q"), folder=True)) == []
    (text,) = problems(Named("--plots", str(tmp_path / "afile"), folder=True))
    assert "--plots" in text and "exists and is not a directory" in text
    (text,) = problems(Named("--plots", str(tmp_path / "afile" / "plots"), folder=True))
    assert "is not a directory" in text
    # A PNG the plots would replace that is an input.
    (tmp_path / "plots").mkdir()
    png = tmp_path / "plots" / "roc.png"
    png.write_bytes(b"data")
    (text,) = path_problems(
        [Named("DATA", str(png))],
        [Named("--plots", str(tmp_path / "plots"), folder=True)],
    )
    assert "--plots" in text and f"DATA {png}" in text


def test_path_problems_unwritable(tmp_path, monkeypatch):
    # As root os.access says every directory is writable: stand in for a
    # read-only directory and file, as another user sees them.
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "old.skops").write_bytes(b"")
    (tmp_path / "old.skops").write_bytes(b"")
    readonly = {str(tmp_path / "ro"), str(tmp_path / "old.skops")}
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: os.fspath(p) not in readonly and real_access(p, mode),
    )
    (text,) = path_problems([], [Named("--out", str(tmp_path / "ro" / "m.skops"))])
    assert f"the directory {tmp_path / 'ro'} is not writable" in text
    (text,) = path_problems([], [Named("--out", str(tmp_path / "old.skops"))])
    assert "exists and is not writable" in text
    (text,) = path_problems(
        [], [Named("--plots", str(tmp_path / "ro" / "p"), folder=True)]
    )
    assert "cannot be made" in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any directory")
def test_path_problems_unwritable_directory_for_real(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    (text,) = path_problems([], [Named("--out", str(tmp_path / "ro" / "m.skops"))])
    assert "is not writable" in text


# ----------------------------------------------------------------------------
# Every command, through Python at 2 ranks: the same UsageError everywhere, before any work


def _refusals(comm, d):
    import mpitrain.data as data_module
    from mpitrain.errors import UsageError
    from mpitrain.workflow import (
        describe,
        evaluate,
        make_data,
        predict,
        run_demo,
        train,
    )

    data, out = f"{d}/d.h5", f"{d}/out"
    opened = []
    real_open_rows = data_module.open_rows
    # Proof that a refusal comes before the work: no data file is opened for rows.
    data_module.open_rows = lambda *a, **k: opened.append(a) or real_open_rows(*a, **k)
    cases = {
        "out is checkpoint": lambda: train(
            data,
            model="ridge",
            out=f"{out}/m",
            checkpoint=f"{out}/m",
            comm=comm,
            quiet=True,
        ),
        "report is data": lambda: train(
            data, model="ridge", out=f"{out}/m", report=data, comm=comm, quiet=True
        ),
        "out is a link to data": lambda: train(
            data, model="ridge", out=f"{d}/link.h5", comm=comm, quiet=True
        ),
        "out directory missing": lambda: train(
            data,
            model="logistic",
            out=f"{d}/missing/m",
            checkpoint=f"{out}/c.ckpt",
            checkpoint_every=1,
            comm=comm,
            quiet=True,
        ),
        "out under a file": lambda: train(
            data, model="ridge", out=f"{d}/afile/m", comm=comm, quiet=True
        ),
        "plots is a file": lambda: train(
            data,
            model="ridge",
            out=f"{out}/m",
            plots=f"{d}/afile",
            comm=comm,
            quiet=True,
        ),
        "predict over data": lambda: predict(
            f"{d}/model.skops", data, out=data, comm=comm, quiet=True
        ),
        "predict over model": lambda: predict(
            f"{d}/model.skops", data, out=f"{d}/model.skops", comm=comm, quiet=True
        ),
        "evaluate report is data": lambda: evaluate(
            f"{d}/model.skops", data, report=data, comm=comm, quiet=True
        ),
        "describe json is data": lambda: describe(
            data, json=data, comm=comm, quiet=True
        ),
        "make-data under a file": lambda: make_data(
            "regression", f"{d}/afile/x.h5", rows=10, features=2, comm=comm, quiet=True
        ),
        "demo into a file": lambda: run_demo(out=f"{d}/afile", comm=comm, quiet=True),
    }
    got = {}
    try:
        for case, call in cases.items():
            try:
                call()
                got[case] = ("no error", "")
            except UsageError as exc:
                got[case] = ("UsageError", str(exc))
            except Exception as exc:
                got[case] = (type(exc).__name__, str(exc))
    finally:
        data_module.open_rows = real_open_rows
    return got, len(opened), sorted(os.listdir(out))


@pytest.mark.mpi(ranks=[2])
def test_every_command_refuses_bad_outputs_before_any_work(tmp_path, mpi_ranks):
    X, y = regression_problem(n=40, d=3)
    write_h5(tmp_path / "d.h5", X, y)
    (tmp_path / "out").mkdir()
    (tmp_path / "link.h5").symlink_to(tmp_path / "d.h5")
    (tmp_path / "afile").write_bytes(b"not a folder")
    (tmp_path / "model.skops").write_bytes(b"never loaded: refused before")
    before = (tmp_path / "d.h5").read_bytes()
    per_rank = run_function(_refusals, mpi_ranks, str(tmp_path), timeout=TIMEOUT)
    got, opened, left = per_rank[0]
    assert all(r[0] == got for r in per_rank), "the ranks raised different errors"
    expected = {
        "out is checkpoint": "--out {d}/out/m and --checkpoint {d}/out/m are the same file",
        "report is data": "--report {d}/d.h5 is the input DATA {d}/d.h5",
        "out is a link to data": "--out {d}/link.h5 (that is {d}/d.h5) is the input DATA",
        "out directory missing": "the directory {d}/missing does not exist",
        "out under a file": "{d}/afile is not a directory",
        "plots is a file": "--plots {d}/afile exists and is not a directory",
        "predict over data": "--out {d}/d.h5 is the input DATA {d}/d.h5",
        "predict over model": "--out {d}/model.skops is the input MODEL {d}/model.skops",
        "evaluate report is data": "--report {d}/d.h5 is the input DATA",
        "describe json is data": "--json {d}/d.h5 is the input DATA",
        "make-data under a file": "{d}/afile is not a directory",
        "demo into a file": "--out {d}/afile exists and is not a directory",
    }
    for case, text in expected.items():
        kind, message = got[case]
        assert kind == "UsageError", (case, kind, message)
        assert text.format(d=tmp_path) in message, (case, message)
        assert "on all 2 ranks" in message, (case, message)
    # Before any work: no rows read, no checkpoint, no model, no report, no plots.
    assert opened == 0 and left == []
    assert (tmp_path / "d.h5").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [
        "afile",
        "d.h5",
        "link.h5",
        "model.skops",
        "out",
    ]


def test_predict_over_its_data_is_refused_once_leaving_the_data_intact(
    tmp_path, mpitrain_cli
):
    X, y = regression_problem(n=40, d=3)
    data = write_h5(tmp_path / "d.h5", X, y)
    (tmp_path / "m.skops").write_bytes(b"refused before it is loaded")
    before = (tmp_path / "d.h5").read_bytes()
    run = mpirun(
        2,
        [*mpitrain_cli, "predict", str(tmp_path / "m.skops"), data, "--out", data],
        timeout=TIMEOUT,
    )
    assert not run.timed_out and run.returncode == 1, run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("mpitrain: error")
    ]
    assert len(errors) == 1, run.stderr
    assert f"--out {data} is the input DATA {data}" in errors[0]
    assert "all 2 ranks" in errors[0] and "Traceback" not in run.stderr
    assert (tmp_path / "d.h5").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.h5", "m.skops"]


# ----------------------------------------------------------------------------
# Resume: tied to the options that change the result and to the data's contents


def _resume(comm, d):
    from mpitrain.checkpoint import CheckpointError, CheckpointLoop
    from mpitrain.workflow import TrainOptions, train
    from mpitrain.workflow._train import run_fingerprint

    data, ckpt = f"{d}/d.h5", f"{d}/c.ckpt"
    common = dict(model="ridge", alpha=0.5, checkpoint=ckpt, comm=comm, quiet=True)
    real_step = CheckpointLoop.step

    def failing_step(self, *args, **kwargs):
        written = real_step(self, *args, **kwargs)
        if written:
            raise RuntimeError("stopped after the first checkpoint")
        return written

    # A real checkpoint of a run stopped after its first block.
    CheckpointLoop.step = failing_step
    try:
        train(data, out=f"{d}/stopped.skops", checkpoint_every=1, **common)
    except RuntimeError:
        pass
    finally:
        CheckpointLoop.step = real_step
    saved = os.path.exists(ckpt)
    refused = {}
    for case, extra in (("seed", {"seed": 3}), ("impute", {"impute": "mean"})):
        try:
            train(data, out=f"{d}/{case}.skops", resume=True, **extra, **common)
            refused[case] = None
        except CheckpointError as exc:
            refused[case] = str(exc)
    # Other values, same shape and size, the time put back (as cp -p, touch -r, a restore do).
    if comm.Get_rank() == 0:
        shutil.copy2(data, f"{d}/original.h5")
        stat = os.stat(data)
        with h5py.File(data, "r+") as f:
            f["X"][...] = f["X"][...] + 1.0
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    comm.Barrier()
    try:
        train(data, out=f"{d}/changed.skops", resume=True, **common)
        refused["contents"] = None
    except CheckpointError as exc:
        refused["contents"] = str(exc)
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.copy2(f"{d}/original.h5", data)
    comm.Barrier()
    # The same data and options: the run resumes from its checkpoint.
    result = train(data, out=f"{d}/resumed.skops", resume=True, **common)
    # A dataset name h5py cannot look up ("/" raises RuntimeError) on the rank
    # that digests the file: every rank still reaches the allgather.
    odd = run_fingerprint(
        TrainOptions(data=data, model="ridge", out=f"{d}/odd.skops", x="/"), comm
    )
    return saved, refused, result.model.coef_, os.path.exists(ckpt), odd


@pytest.mark.mpi(ranks=[2])
def test_resume_refuses_other_options_and_rewritten_data(tmp_path, mpi_ranks):
    from sklearn.linear_model import Ridge

    X, y = regression_problem(n=3001, d=4, offset=2.0)
    # Blocks of a few hundred rows: the first checkpoint comes early.
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(250, 4))
        f.create_dataset("y", data=y, chunks=(250,))
    per_rank = run_function(_resume, mpi_ranks, str(tmp_path), timeout=TIMEOUT)
    saved, refused, coef, left, odd = per_rank[0]
    assert saved, "the stopped run left no checkpoint"
    for other in per_rank[1:]:
        assert other[1] == refused  # the same refusal on every rank
        assert other[4] == odd  # the same fingerprint on every rank
    assert odd[f"contents of {tmp_path / 'd.h5'}"] is None
    assert "seed: checkpoint 0, now 3" in refused["seed"]
    assert "impute: checkpoint None, now 'mean'" in refused["impute"]
    assert f"contents of {tmp_path / 'd.h5'}" in refused["contents"]
    for text in refused.values():
        assert "remove it, or choose another checkpoint path" in text
    reference = Ridge(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(coef, reference.coef_, rtol=1e-9)
    assert not left  # removed after the resumed run succeeded
