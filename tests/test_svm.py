"""Cascade SVMs against scikit-learn's SVC/SVR on all rows.

Tolerances.  Both sides use ``tol=1e-5``.  libsvm stops when the largest
KKT violation of the dual is below ``tol``, so two solutions of the same
strictly convex problem (PSD kernel) from different starting sets differ in
the decision function by about ``tol`` times the scale of the decision
values; we allow ``1e-3`` relative to the largest decision value on the
held-out rows (measured: ~1e-6).  One pass (no feedback) is an
approximation: we require held-out accuracy within 5 percentage points and
95% of held-out labels equal to scikit-learn's (SVC), predictions within
0.25 relative to their scale (SVR).  The sigmoid kernel is not PSD in general, so
its optimum need not be unique; it is tested with ``gamma=0.02, coef0=-1``,
where it behaves.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import svm
from sklearn.datasets import make_classification, make_regression

from mpitrain.data import row_range
from mpitrain.svm import (
    SVC,
    cascade_tree,
    dedupe_by_id,
    plain_sklearn_model,
    pooled_entry_variance,
    svc_dual_objective,
    svc_violators,
    svr_violators,
)
from mpitrain.testing import run_function

TIMEOUT = 90
TOL = 1e-5
CONVERGED_RTOL = 1e-3
ONE_PASS_RTOL = 0.25
ONE_PASS_ACCURACY = 0.05


def _classification(seed=0, classes=3):
    X, y = make_classification(
        n_samples=360,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return X[:280], y[:280], X[280:], y[280:]


def _regression():
    X, y = make_regression(n_samples=300, n_features=4, noise=5.0, random_state=1)
    y = y / np.std(y)
    return X[:240], y[:240], X[240:], y[240:]


# Each case: (name, estimator kind, parameters). "arity": None means flat (arity = ranks).
CASES = [
    ("rbf-scale", "SVC", {"kernel": "rbf", "gamma": "scale", "C": 1.0}, 2),
    (
        "linear-balanced-flat",
        "SVC",
        {"kernel": "linear", "C": 0.5, "class_weight": "balanced"},
        None,
    ),
    (
        "poly",
        "SVC",
        {"kernel": "poly", "degree": 2, "gamma": "auto", "coef0": 1.0, "C": 1.0},
        2,
    ),
    (
        "sigmoid",
        "SVC",
        {"kernel": "sigmoid", "gamma": 0.02, "coef0": -1.0, "C": 1.0},
        3,
    ),
    ("svr-rbf", "SVR", {"kernel": "rbf", "C": 2.0, "epsilon": 0.1}, 2),
]


def _gold_body(comm, cases, max_passes):
    import mpitrain.svm

    size, rank = comm.Get_size(), comm.Get_rank()
    out = []
    for name, kind, params, arity in cases:
        X, y, Xt, _ = _regression() if kind == "SVR" else _classification()
        a, b = row_range(len(X), size, rank)
        model = getattr(mpitrain.svm, kind)(
            tol=TOL,
            max_passes=max_passes,
            arity=arity or max(size, 2),
            comm=comm,
            **params,
        ).fit(X[a:b], y[a:b])
        scores = model.decision_function(Xt) if kind == "SVC" else model.predict(Xt)
        out.append((name, model.estimator_, scores, model.cascade_))
    return out


def _reference(kind, params):
    X, y, Xt, yt = _regression() if kind == "SVR" else _classification()
    ref = getattr(svm, kind)(tol=TOL, **params).fit(X, y)
    scores = ref.decision_function(Xt) if kind == "SVC" else ref.predict(Xt)
    return ref, scores, Xt, yt


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_converged_cascade_is_scikit_learns_optimum(mpi_ranks):
    results = run_function(_gold_body, mpi_ranks, CASES, 30, timeout=TIMEOUT)
    for (name, kind, params, _), (_, model, scores, report) in zip(CASES, results[0]):
        ref, ref_scores, Xt, yt = _reference(kind, params)
        assert type(model) is type(ref), name
        assert report["converged"] and report["violators"][-1] == 0, (name, report)
        scale = np.abs(ref_scores).max()
        np.testing.assert_allclose(
            scores, ref_scores, rtol=0, atol=CONVERGED_RTOL * scale, err_msg=name
        )
        np.testing.assert_allclose(
            model.predict(Xt),
            ref.predict(Xt),
            atol=CONVERGED_RTOL * scale,
            err_msg=name,
        )
        assert model._gamma == pytest.approx(ref._gamma, rel=1e-12), name
        assert model.gamma == params.get(
            "gamma", "scale"
        )  # the user's parameter is kept
        if kind == "SVC":
            assert model.score(Xt, yt) == ref.score(Xt, yt), name
            assert abs(len(model.support_) - len(ref.support_)) <= 2, name
            np.testing.assert_allclose(
                model.class_weight_, ref.class_weight_, rtol=1e-12
            )
        assert report["support_vectors"] == len(model.support_)
        assert (
            report["passes"] >= 1 and len(report["dual_objective"]) == report["passes"]
        )
        assert "raw rows" in report["privacy"]
        if mpi_ranks > 1:
            assert report["bytes_moved"] > 0
    for other in results[1:]:  # the same model on every rank
        for (_, mine, _, _), (_, theirs, _, _) in zip(results[0], other):
            assert np.array_equal(mine.dual_coef_, theirs.dual_coef_)
            assert np.array_equal(mine.support_vectors_, theirs.support_vectors_)


@pytest.mark.mpi(ranks=[2, 4])
def test_one_pass_is_close(mpi_ranks):
    cases = [CASES[0], CASES[4]]
    results = run_function(_gold_body, mpi_ranks, cases, 1, timeout=TIMEOUT)
    for (name, kind, params, _), (_, model, scores, report) in zip(cases, results[0]):
        ref, ref_scores, Xt, yt = _reference(kind, params)
        assert report["passes"] == 1
        if kind == "SVC":
            # "ovr" decision values count votes, which jump by one when a pair flips: compare labels.
            assert (
                np.mean(model.predict(Xt) == ref.predict(Xt)) >= 1 - ONE_PASS_ACCURACY
            ), name
            assert abs(model.score(Xt, yt) - ref.score(Xt, yt)) <= ONE_PASS_ACCURACY, (
                name
            )
        else:
            assert (
                np.abs(scores - ref_scores).max()
                <= ONE_PASS_RTOL * np.abs(ref_scores).max()
            ), name


def _layout(X, y, size):
    """Awkward slices: rank 0 empty, rank 1 one class, class 2 only on the last rank, duplicates."""
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]
    by_class = [np.flatnonzero(y == c) for c in range(3)]
    parts = [np.zeros(0, dtype=int) for _ in range(size)]
    parts[1] = by_class[0][: len(by_class[0]) // 2]  # class 0 only
    rest01 = np.concatenate([by_class[0][len(by_class[0]) // 2 :], by_class[1]])
    parts[-1] = np.concatenate([by_class[2], rest01[::2]])  # the only rank with class 2
    if size > 3:
        parts[2] = rest01[1::2]
    else:
        parts[-1] = np.concatenate([parts[-1], rest01[1::2]])
    dupes = parts[1][:10]  # rows on rank 1 that the last rank holds too
    parts[-1] = np.concatenate([parts[-1], dupes])
    Xs = [X[p] for p in parts]
    ys = [y[p] for p in parts]
    return Xs, ys, np.concatenate(Xs), np.concatenate(ys)


def _awkward_body(comm):
    import mpitrain.svm

    X, y, Xt, _ = _classification(seed=3)
    Xs, ys, _, _ = _layout(X, y, comm.Get_size())
    rank = comm.Get_rank()
    # The warm solver (not "auto"'s libsvm at this size) meets the awkward layouts.
    model = mpitrain.svm.SVC(
        kernel="rbf", C=2.0, tol=TOL, max_passes=30, refit_solver="warm", comm=comm
    ).fit(Xs[rank], ys[rank])
    try:
        mpitrain.svm.SVC(engine="intelex", comm=comm).fit(Xs[rank], ys[rank])
        engine_error = ""
    except Exception as exc:
        engine_error = f"{type(exc).__name__}: {exc}"
    return model.estimator_, model.decision_function(Xt), model.cascade_, engine_error


@pytest.mark.mpi(ranks=[3, 4])
def test_empty_rank_single_class_rank_lonely_class_and_duplicates(mpi_ranks):
    results = run_function(_awkward_body, mpi_ranks, timeout=TIMEOUT)
    model, scores, report, engine_error = results[0]
    X, y, Xt, yt = _classification(seed=3)
    _, _, X_all, y_all = _layout(X, y, mpi_ranks)
    ref = svm.SVC(kernel="rbf", C=2.0, tol=TOL).fit(X_all, y_all)
    ref_scores = ref.decision_function(Xt)
    assert report["converged"]
    np.testing.assert_allclose(
        scores, ref_scores, atol=CONVERGED_RTOL * np.abs(ref_scores).max()
    )
    assert model.score(Xt, yt) == ref.score(Xt, yt)
    assert model._gamma == pytest.approx(ref._gamma, rel=1e-12)
    assert model.classes_.tolist() == [0, 1, 2]
    try:
        import sklearnex  # noqa: F401
    except ImportError:
        assert 'pip install "mpitrain[intel]"' in engine_error
        assert all(r[3] == engine_error for r in results)


def _digits_body(comm, max_passes):
    from sklearn.datasets import load_digits

    import mpitrain.svm

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    a, b = row_range(1500, comm.Get_size(), comm.Get_rank())
    model = mpitrain.svm.SVC(
        kernel="rbf",
        C=5.0,
        tol=TOL,
        max_passes=max_passes,
        refit_solver="warm",
        comm=comm,
    ).fit(X[a:b], y[a:b])
    return model.estimator_, model.cascade_


@pytest.mark.mpi(ranks=[3])
def test_real_images_digits(mpi_ranks):
    """scikit-learn's bundled 8×8 handwritten digits (real images, 10 classes, offline)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    ref = svm.SVC(kernel="rbf", C=5.0, tol=TOL).fit(X[:1500], y[:1500])
    Xt, yt = X[1500:], y[1500:]
    converged, report = run_function(_digits_body, mpi_ranks, 30, timeout=TIMEOUT)[0]
    assert report["converged"], report
    scale = np.abs(ref.decision_function(Xt)).max()
    np.testing.assert_allclose(
        converged.decision_function(Xt),
        ref.decision_function(Xt),
        atol=CONVERGED_RTOL * scale,
    )
    assert converged.score(Xt, yt) == ref.score(Xt, yt)
    one_pass, report = run_function(_digits_body, mpi_ranks, 1, timeout=TIMEOUT)[0]
    assert report["passes"] == 1
    assert abs(one_pass.score(Xt, yt) - ref.score(Xt, yt)) <= ONE_PASS_ACCURACY


def _intelex_body(comm):
    import mpitrain.svm

    out = []
    for kind, (X, y, _Xt, _) in [
        ("SVC", _classification()),
        ("SVC", _classification(classes=2)),
        ("SVR", _regression()),
    ]:
        a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
        model = getattr(mpitrain.svm, kind)(
            engine="intelex", tol=TOL, max_passes=30, comm=comm
        ).fit(X[a:b], y[a:b])
        out.append((kind, model.estimator_, model.cascade_))
    return out


@pytest.mark.mpi(ranks=[2])
def test_intelex_engine_gives_a_plain_sklearn_model(mpi_ranks):
    pytest.importorskip(
        "sklearnex", reason="scikit-learn-intelex (the 'intel' extra) is not installed"
    )
    results = run_function(_intelex_body, mpi_ranks, timeout=TIMEOUT)
    data = [_classification(), _classification(classes=2), _regression()]
    for (kind, model, report), (X, y, Xt, _yt) in zip(results[0], data):
        ref = getattr(svm, kind)(tol=TOL).fit(X, y)
        assert type(model) is type(ref)  # loads without the extra
        assert report["converged"], report
        got = model.decision_function(Xt) if kind == "SVC" else model.predict(Xt)
        want = ref.decision_function(Xt) if kind == "SVC" else ref.predict(Xt)
        # oneDAL's solver stops by its own criterion: agreement to ~1e-3 of the scale.
        np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())


# ----------------------------------------------------------------------------
# Pure functions, no MPI


def test_cascade_tree():
    assert cascade_tree(1, 2) == []
    assert cascade_tree(4, 2) == [[[0, 1], [2, 3]], [[0, 2]]]
    assert cascade_tree(5, 2) == [[[0, 1], [2, 3], [4]], [[0, 2], [4]], [[0, 4]]]
    assert cascade_tree(4, 4) == [[[0, 1, 2, 3]]]  # flat
    assert cascade_tree(3, 8) == [[[0, 1, 2]]]
    assert cascade_tree(7, 3) == [[[0, 1, 2], [3, 4, 5], [6]], [[0, 3, 6]]]
    with pytest.raises(ValueError):
        cascade_tree(4, 1)


def test_dedupe_by_id_keeps_first_in_id_order():
    ids = np.array([5, 3, 5, 9, 3])
    keep = dedupe_by_id(ids)
    assert ids[keep].tolist() == [3, 5, 9]
    assert keep.tolist() == [1, 0, 3]


def test_violator_tests():
    # binary: positive decision means classes_[1]
    assert svc_violators(
        np.array([2.0, 0.5, -1.0, 0.3]), np.array([1, 1, 0, 0]), 2, 1e-3
    ).tolist() == [False, True, False, True]
    # three classes, pairs (0,1), (0,2), (1,2); positive means the first class of the pair
    dec = np.array(
        [
            [1.5, 1.2, 9.0],  # class 0: fine in both of its pairs
            [-1.5, 9.0, 0.2],  # class 1: fine vs 0, violates vs 2
            [9.0, -1.0, -1.0],
        ]
    )  # class 2: on the margin (not a violator)
    assert svc_violators(dec, np.array([0, 1, 2]), 3, 1e-3).tolist() == [
        False,
        True,
        False,
    ]
    assert svr_violators(
        np.array([1.0, 1.0]), np.array([1.05, 1.3]), 0.1, 1e-3
    ).tolist() == [False, True]


def test_pooled_variance_and_dual_objective():
    rng = np.random.default_rng(0)
    blocks = [rng.normal(loc=1e6, size=(n, 3)) for n in (5, 0, 7)]
    counts = [b.size for b in blocks]
    means = [b.mean() if b.size else 0.0 for b in blocks]
    sums = [((b - b.mean()) ** 2).sum() if b.size else 0.0 for b in blocks]
    assert pooled_entry_variance(counts, means, sums) == pytest.approx(
        np.concatenate(blocks).var(), rel=1e-9
    )
    # Dual objective: a better-converged fit has a lower (or equal) dual.
    X, y, _, _ = _classification()
    loose = svm.SVC(tol=1e-1).fit(X, y)
    tight = svm.SVC(tol=1e-6).fit(X, y)
    assert svc_dual_objective(tight) <= svc_dual_objective(loose) + 1e-9


def test_dual_objectives_against_numpy_and_in_shares(monkeypatch):
    from sklearn.metrics.pairwise import rbf_kernel

    monkeypatch.setattr(
        "mpitrain.svm._cascade._BLOCK_ROWS", 16
    )  # several blocks per share
    from mpitrain.svm import svr_dual_objective

    X, y, _, _ = _classification(classes=2)
    model = svm.SVC(C=1.5, gamma=0.3).fit(X, y)
    a = model.dual_coef_.ravel()  # y_i α_i
    K = rbf_kernel(model.support_vectors_, gamma=0.3)
    want = 0.5 * a @ K @ a - np.abs(a).sum()
    assert svc_dual_objective(model) == pytest.approx(want, rel=1e-10)
    # Three ranks' shares of small blocks add up to the whole.
    from mpitrain import svm as ours

    parts = [ours.svc_dual_objective(model, (i, 3)) for i in range(3)]
    assert all(abs(p) > 0 for p in parts[1:])
    assert sum(parts) == pytest.approx(want, rel=1e-10)

    X, y, _, _ = _regression()
    reg = svm.SVR(C=2.0, epsilon=0.2, gamma=0.5).fit(X, y)
    beta = reg.dual_coef_.ravel()
    K = rbf_kernel(reg.support_vectors_, gamma=0.5)
    y_sv = y[reg.support_]
    want = 0.5 * beta @ K @ beta + 0.2 * np.abs(beta).sum() - y_sv @ beta
    assert svr_dual_objective(reg, y_sv) == pytest.approx(want, rel=1e-10)
    assert sum(
        svr_dual_objective(reg, y_sv, (i, 2)) for i in range(2)
    ) == pytest.approx(want, rel=1e-10)


def test_probability_is_refused_before_any_communication():
    with pytest.raises(ValueError, match="probability=True is not supported"):
        SVC(probability=True).fit(np.zeros((2, 2)), [0, 1])


class _ForeignSVC(svm.SVC):
    """Stands in for another library's SVC (a different type with scikit-learn's attributes)."""


class _ForeignSVR(svm.SVR):
    pass


@pytest.mark.parametrize("classes", [2, 3])
def test_plain_sklearn_model_predicts_like_the_foreign_model(classes):
    import pickle

    X, y, Xt, _ = _classification(classes=classes)
    foreign = _ForeignSVC(C=2.0, class_weight="balanced").fit(X, y)
    plain = plain_sklearn_model(foreign, svm.SVC)
    assert type(plain) is svm.SVC
    np.testing.assert_array_equal(
        plain.decision_function(Xt), foreign.decision_function(Xt)
    )
    np.testing.assert_array_equal(plain.predict(Xt), foreign.predict(Xt))
    again = pickle.loads(pickle.dumps(plain))
    np.testing.assert_array_equal(
        again.decision_function(Xt), foreign.decision_function(Xt)
    )
    assert plain_sklearn_model(plain, svm.SVC) is plain


def test_plain_sklearn_model_svr():
    X, y, Xt, _ = _regression()
    foreign = _ForeignSVR(C=2.0, epsilon=0.2).fit(X, y)
    plain = plain_sklearn_model(foreign, svm.SVR)
    assert type(plain) is svm.SVR
    np.testing.assert_array_equal(plain.predict(Xt), foreign.predict(Xt))


@pytest.mark.parametrize("classes", [2, 3])
def test_plain_sklearn_model_from_intelex(classes):
    sklearnex_svm = pytest.importorskip(
        "sklearnex.svm", reason="scikit-learn-intelex is not installed"
    )
    X, y, Xt, _ = _classification(classes=classes)
    fitted = sklearnex_svm.SVC(C=2.0).fit(X, y)
    plain = plain_sklearn_model(fitted, svm.SVC)
    assert type(plain) is svm.SVC
    np.testing.assert_allclose(
        plain.decision_function(Xt), fitted.decision_function(Xt), rtol=1e-9, atol=1e-9
    )
    reg = sklearnex_svm.SVR(C=2.0).fit(*_regression()[:2])
    np.testing.assert_allclose(
        plain_sklearn_model(reg, svm.SVR).predict(_regression()[2]),
        reg.predict(_regression()[2]),
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize("classes", [2, 3, 4])
@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_decision_values_equal_libsvm(monkeypatch, classes, kernel):
    from mpitrain.svm import decision_values

    # Several uneven blocks (whatever the width's block size).
    monkeypatch.setattr("mpitrain.svm._cascade.block_entries", lambda n_features: 997)
    X, y = make_classification(
        n_samples=300,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=classes,
    )
    model = svm.SVC(
        kernel=kernel,
        gamma=0.05 if kernel == "sigmoid" else "scale",
        coef0=0.5,
        decision_function_shape="ovo",
    ).fit(X[:200], y[:200])
    want = model.decision_function(X[200:])
    np.testing.assert_allclose(
        decision_values(model, X[200:]), want, rtol=1e-10, atol=1e-10
    )


def test_decision_values_svr():
    from mpitrain.svm import decision_values

    X, y, Xt, _ = _regression()
    model = svm.SVR(C=3.0).fit(X, y)
    np.testing.assert_allclose(
        decision_values(model, Xt), model.predict(Xt), rtol=1e-10, atol=1e-10
    )


# ----------------------------------------------------------------------------
# The first pass checkpoints at its layer boundaries (issue 12, item 11)


def _checkpointed_svc(comm, **params):
    """The checkpoint tests' cascade: two layers, the warm solver (not "auto"'s libsvm here)."""
    return SVC(
        kernel="rbf",
        C=10.0,
        tol=TOL,
        max_passes=4,
        arity=2,
        refit_solver="warm",
        comm=comm,
        **params,
    )


def _first_pass_resume_body(comm, folder, at):
    """Fit without checkpoints; then stopped by SIGUSR1 at layer boundary ``at``; then resumed."""
    import os
    import signal

    import mpitrain.svm._cascade as cascade
    from mpitrain.checkpoint import (
        CheckpointInterrupted,
        CheckpointLoop,
        checkpointing,
    )

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y, _, _ = _classification()
    a, b = row_range(len(X), size, rank)

    def make():
        return _checkpointed_svc(comm)

    fits = []
    fit_set = cascade._CascadeSVM._fit_set

    def counting_fit_set(self, block, *args, **kwargs):
        fits.append(len(block))
        return fit_set(self, block, *args, **kwargs)

    cascade._CascadeSVM._fit_set = counting_fit_set
    step = CheckpointLoop.step

    def signalling_step(self, state=None, iteration=None):
        # The real signal through the real handler, on the last rank only.
        if self.id.startswith("cascade_layers:") and iteration == at:
            if rank == size - 1:
                os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, state, iteration)

    path = os.path.join(folder, "svc.ckpt")
    out = {}
    try:
        ref = make().fit(X[a:b], y[a:b])
        out["ref"] = (ref.estimator_, ref.cascade_, len(fits))
        CheckpointLoop.step = signalling_step
        try:
            with checkpointing(path, comm=comm):
                make().fit(X[a:b], y[a:b])
            out["stopped"] = None
        except CheckpointInterrupted as exc:
            out["stopped"] = (str(exc), exc.iteration)
        finally:
            CheckpointLoop.step = step
        out["kept"] = os.path.exists(path)
        del fits[:]
        with checkpointing(path, resume=True, comm=comm) as ck:
            resumed = make().fit(X[a:b], y[a:b])
        out["resumed"] = (resumed.estimator_, resumed.cascade_, len(fits))
        out["resumed_flag"] = ck.resumed
    finally:
        cascade._CascadeSVM._fit_set = fit_set
        CheckpointLoop.step = step
    return out


def _first_pass_other_ranks_body(comm, path):
    from mpitrain.checkpoint import checkpointing

    X, y, _, _ = _classification()
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    try:
        with checkpointing(path, resume=True, comm=comm, keep=True):
            _checkpointed_svc(comm, gamma=0.2).fit(X[a:b], y[a:b])
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


@pytest.mark.mpi(ranks=[3, 4])
def test_first_pass_resumes_from_a_layer_boundary_bit_for_bit(tmp_path, mpi_ranks):
    # 3 ranks: boundaries after the local fits (1) and after layer 1 (2); 4 ranks: the same.
    at = 1 if mpi_ranks == 3 else 2
    out = run_function(
        _first_pass_resume_body, mpi_ranks, str(tmp_path), at, timeout=TIMEOUT
    )
    for rank, got in enumerate(out):
        message, iteration = got["stopped"]
        assert iteration == at and "first pass at layer" in message, message
        assert f"received by rank {mpi_ranks - 1}" in message, message
        assert got["kept"] and got["resumed_flag"]
        ref, ref_report, ref_fits = got["ref"]
        model, report, fits = got["resumed"]
        for attr in ("support_vectors_", "dual_coef_", "intercept_", "support_"):
            assert np.array_equal(getattr(model, attr), getattr(ref, attr)), attr
        assert report == ref_report
        assert ref_report["passes"] >= 2
        # The resumed run did not fit the saved layers again: ranks that
        # only fitted their own rows (layer 0) fit nothing now.
        if rank % 2 == 1:
            assert ref_fits == 1 and fits == 0, (rank, ref_fits, fits)
    assert not (tmp_path / "svc.ckpt").exists()  # removed after the successful resume
    X, y, Xt, _ = _classification()
    sk = svm.SVC(kernel="rbf", C=10.0, tol=TOL).fit(X, y)
    scale = np.abs(sk.decision_function(Xt)).max()
    np.testing.assert_allclose(
        out[0]["resumed"][0].decision_function(Xt),
        sk.decision_function(Xt),
        atol=CONVERGED_RTOL * scale,
    )


def _first_pass_left_body(comm, path):
    """Stopped by SIGUSR1 at the first layer boundary; the checkpoint is left."""
    import os
    import signal

    from mpitrain.checkpoint import CheckpointInterrupted, CheckpointLoop, checkpointing

    step = CheckpointLoop.step

    def signalling_step(self, state=None, iteration=None):
        if self.id.startswith("cascade_layers:") and comm.Get_rank() == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, state, iteration)

    X, y, _, _ = _classification()
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    CheckpointLoop.step = signalling_step
    try:
        with checkpointing(path, comm=comm):
            _checkpointed_svc(comm, gamma=0.2).fit(X[a:b], y[a:b])
    except CheckpointInterrupted as exc:
        return exc.iteration
    finally:
        CheckpointLoop.step = step
    return None


def test_first_pass_checkpoint_refuses_another_number_of_ranks(tmp_path):
    path = str(tmp_path / "svc.ckpt")
    assert run_function(_first_pass_left_body, 3, path, timeout=TIMEOUT) == [1] * 3
    errors = run_function(_first_pass_other_ranks_body, 2, path, timeout=TIMEOUT)
    assert len(set(errors)) == 1 and errors[0] is not None, errors
    kind, message = errors[0]
    assert kind == "CheckpointError", errors
    assert "on 3 ranks" in message and "resume it on 3 ranks, not 2" in message
